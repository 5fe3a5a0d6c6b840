"""Issue 16: a table of bad inputs across the CLI and the Python API, each refused before any work.

Every row is one bad input with the error it must give: the CLI exits 2 with one `lbdist <command>: error:` line
(no traceback), the API raises ValueError (or a subclass); either way the message names the offending value.
Rows marked late are the issue's "errors after the work" and "silently wrong" cases: each must now fail in under
2 seconds (measured around the call, with the libraries already imported; no model weights are loaded first).
A few rows run as real subprocesses to show the exit code and the single stderr line.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import pytest

from lbdist.bridge import AdapterSet, BridgeConfig, CacheLimits, LoraSettings, Schedule, random_adapter_set
from lbdist.bridge.adapter_files import MANIFEST
from lbdist.calibrate import RecordConfig, TrainConfig, record_pairs
from lbdist.cli import main
from lbdist.demo import DemoConfig, run_demo
from lbdist.generation import GenerationRequest, Generator, GeneratorConfig, ModelInfo, preflight
from lbdist.parallel import WorkerGroupConfig
from lbdist.parallel.group import WorkerGroup
from helpers import make_pipe

ROOT = Path(__file__).resolve().parents[1]
LATE_S = 2.0
SET_SCHEDULE = Schedule.periodic(6, 3)  # bridged steps 1, 2, 4, 5 (FLUX: one branch)
PROMPTS = ["a red circle moving left on a black background", "a blue square moving up on a white background",
           "gray background with a green triangle moving right"]
BAD_PROMPT = "a purple elephant dancing"
WAN = ModelInfo("wan", True, 16, 4, {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 20},
                ("cond", "uncond"), 2, "tiny:wan")
FLUX = ModelInfo("flux", False, 16, 0, {"height": 32, "width": 32, "num_inference_steps": 20}, source="tiny:flux")


@dataclass(frozen=True)
class Row:
    """One bad input: CLI argv (exit 2) or a callable (raises `exc`); `needle` must appear in the message."""

    id: str
    run: Union[list, Callable]
    needle: str
    late: bool = False
    exc: type = ValueError


def gen(*args, model="tiny:wan", out="out.mp4") -> list:
    return ["generate", "--model", model, "--prompt", "a red circle", "--out", out, *args]


def cal(*args, model="tiny:wan") -> list:
    return ["calibrate", "--model", model, "--prompts", "prompts.txt", "--steps", "4", "--schedule", "2",
            "--out", "cal/new", *args]


def demo(*args) -> list:
    return ["demo", "--model", "tiny:wan", "--out", "demo-out", *args]


# --- the workspace every row runs in (cwd) ------------------------------------------------------------------------
def _save_sets(root: Path) -> None:
    pipe = make_pipe("flux")
    full = random_adapter_set(pipe.transformer, SET_SCHEDULE, lora=LoraSettings(2, 4.0), std=0.1)
    full.save(root / "good")
    part = AdapterSet(full.family, full.transformer_class, full.config_digest, full.schedule, full.branches, full.lora,
                      {k: v for k, v in full.weights.items() if k[0] in (1, 2)})
    part.save(root / "partial")

    def variant(name: str, change) -> None:
        import shutil

        shutil.copytree(root / "good", root / name)
        manifest = json.loads((root / name / MANIFEST).read_text())
        change(root / name, manifest)
        (root / name / MANIFEST).write_text(json.dumps(manifest))

    variant("relative", lambda d, m: m["bridges"][0].update(file="../partial/step001_cond.safetensors"))
    variant("absolute", lambda d, m: m["bridges"][0].update(file="/etc/passwd"))
    variant("nobridges", lambda d, m: m.pop("bridges"))
    variant("digest", lambda d, m: (d / "step004_cond.safetensors").write_bytes(
        (d / "step004_cond.safetensors").read_bytes() + b" "))

    def symlink(d: Path, m: dict) -> None:
        (d / "step002_cond.safetensors").rename(root.parent / "outside.safetensors")
        (d / "step002_cond.safetensors").symlink_to(root.parent / "outside.safetensors")
    variant("symlink", symlink)

    def garbage(d: Path, m: dict) -> None:
        import hashlib

        (d / "step001_cond.safetensors").write_bytes(b"\xff" * 40)
        m["bridges"][0]["sha256"] = hashlib.sha256(b"\xff" * 40).hexdigest()
    variant("garbage", garbage)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("validation")
    (ws / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (ws / "empty.txt").write_text("# only a comment\n\n")
    (ws / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (ws / "afile").write_text("a regular file")
    for d in ("dir.mp4", "emptydir", "adapters", "nomodel"):
        (ws / d).mkdir()
    (ws / "nomodel" / "model_index.json").write_text("{}")
    (ws / "nomodel" / "lbdist_defaults.json").write_text("height: 64")
    folder = ws / "wanfolder"
    make_pipe("wan").save_pretrained(folder)
    (folder / "lbdist_defaults.json").write_text(json.dumps({"height": "64", "width": 64, "num_frames": 5}))
    _save_sets(ws / "sets")
    cwd = os.getcwd()
    os.chdir(ws)
    try:  # a finished calibration, for the resume rows
        assert main(["calibrate", "--model", "tiny:wan", "--prompts", "prompts.txt", "--steps", "4", "--schedule", "2",
                     "--out", "cal/set", "--epochs", "2", "--eval-every", "1", "--rank", "2", "--lr", "0.001"]) == 0
        for source in ("tiny:wan", "tiny:hunyuan_video", "tiny:flux", "toy:wan", "toy:hunyuan_video", "toy:flux",
                       "wanfolder"):  # import what they need: the rows time the checks, not first imports
            try:
                preflight.model_info(source)
            except ValueError:
                pass
    finally:
        os.chdir(cwd)
    return ws


@pytest.fixture(autouse=True)
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)

    def no_actors(self, *a, **k):
        raise AssertionError("a worker group started: the degrees should have been refused before any actor")

    monkeypatch.setattr(WorkerGroup, "start", no_actors)
    return workspace


# --- the table ----------------------------------------------------------------------------------------------------
CLI_ROWS = [
    # generate: the silently wrong and late cases
    Row("gen-frames-0", gen("--frames", "0"), "got 0", late=True),
    Row("gen-frames-neg", gen("--frames", "-5"), "got -5", late=True),
    Row("gen-hunyuan-frames-4", gen("--frames", "4", model="tiny:hunyuan_video"), "num_frames=4", late=True),
    Row("gen-toy-hunyuan-frames-4", gen("--frames", "4", model="toy:hunyuan_video"), "num_frames=4", late=True),
    Row("gen-fps-0-mp4", gen("--fps", "0"), "got 0", late=True),
    Row("gen-fps-0-gif", gen("--fps", "0", out="out.gif"), "got 0", late=True),
    Row("gen-out-webm", gen(out="out.webm"), "'out.webm'", late=True),
    Row("gen-out-unwritable", gen(out="afile/out.mp4"), "'afile/out.mp4'", late=True),
    Row("gen-schedule-1", gen("--schedule", "1"), "schedule '1'", late=True),
    Row("gen-partial-set", gen("--steps", "6", "--schedule", "3", "--adapters", "sets/partial", model="tiny:flux",
                               out="o.png"), "covers 2 of 4 bridges", late=True),
    # generate: every other field
    Row("gen-fps-500", gen("--fps", "500"), "got 500"),
    Row("gen-out-dir", gen(out="dir.mp4"), "'dir.mp4' is a directory"),
    Row("gen-steps-0", gen("--steps", "0"), "got 0"),
    Row("gen-steps-5000", gen("--steps", "5000"), "got 5000"),
    Row("gen-guidance-neg", gen("--guidance", "-1"), "got -1.0"),
    Row("gen-guidance-nan", gen("--guidance", "nan"), "got nan"),
    Row("gen-guidance-100", gen("--guidance", "100"), "got 100.0"),
    Row("gen-height-0", gen("--height", "0"), "got 0"),
    Row("gen-height-17", gen("--height", "17"), "height=17"),
    Row("gen-width-huge", gen("--width", "99999"), "got 99999"),
    Row("gen-toy-height-60", gen("--height", "60", model="toy:wan"), "height=60", late=True),
    Row("gen-schedule-0", gen("--schedule", "0"), "got 0"),
    Row("gen-schedule-word", gen("--schedule", "every-5"), "'every-5'"),
    Row("gen-schedule-no-0", gen("--schedule", "steps:2,4"), "[2, 4]"),
    Row("gen-schedule-range", gen("--steps", "10", "--schedule", "steps:0,99"), "[99]"),
    Row("gen-schedule-warmup", gen("--steps", "10", "--schedule", "periodic:3:w=99"), "got 99"),
    Row("gen-schedule-all-full", gen("--steps", "3", "--schedule", "steps:0,1,2"), "'steps:0,1,2' over 3 steps"),
    Row("gen-seed-neg", gen("--seed", "-1"), "got -1"),
    Row("gen-prompt-empty", gen("--prompt", ""), "got ''"),
    Row("gen-prompt-blank", gen("--prompt", "   "), "got '   '"),
    Row("gen-prompt-long", gen("--prompt", "x" * 5000), "5000 characters"),
    Row("gen-adapters-no-schedule", gen("--adapters", "sets/good"), "adapters='sets/good'"),
    Row("gen-adapters-local-typo", gen("--schedule", "3", "--adapters", "adapters/missing"), "'adapters/missing'"),
    Row("gen-adapters-dot", gen("--schedule", "3", "--adapters", "./nowhere"), "'./nowhere'"),
    Row("gen-adapters-file", gen("--schedule", "3", "--adapters", "afile"), "'afile'"),
    Row("gen-adapters-no-manifest", gen("--schedule", "3", "--adapters", "emptydir"), "'emptydir'"),
    Row("gen-model-family", gen(model="tiny:unet"), "'unet'"),
    Row("gen-model-path", gen(model="./nomodel-here"), "'./nomodel-here'"),
    Row("gen-model-no-index", gen(model="emptydir"), "emptydir"),
    Row("gen-model-defaults-json", gen(model="nomodel"), "lbdist_defaults.json"),
    Row("gen-model-defaults-type", gen(model="wanfolder"), "got '64'", late=True),
    Row("gen-dtype", gen("--dtype", "int8"), "'int8'"),
    Row("gen-device", gen("--device", "tpu"), "'tpu'"),
    Row("gen-image-as-mp4", gen(model="toy:flux"), "'mp4'", late=True),
    Row("gen-video-as-png", gen(out="out.png"), "'png'"),
    Row("gen-image-frames", gen("--frames", "9", model="tiny:flux", out="o.png"), "num_frames=9"),
    Row("gen-argparse-int", gen("--steps", "abc"), "'abc'"),
    Row("gen-argparse-float", gen("--frames", "1.5"), "'1.5'"),
    # calibrate
    Row("cal-prompts-missing", cal("--prompts", "missing.txt"), "'missing.txt'"),
    Row("cal-prompts-empty", cal("--prompts", "empty.txt"), "'empty.txt'"),
    Row("cal-prompts-encoding", cal("--prompts", "latin1.txt"), "'latin1.txt'"),
    Row("cal-seeds-count", cal("--seeds", "1", "2"), "2 seeds for 3 prompts"),
    Row("cal-seeds-neg", cal("--seeds", "-1", "2", "3"), "got -1"),
    Row("cal-schedule-1", cal("--schedule", "1"), "schedule '1'", late=True),
    Row("cal-schedule-word", cal("--schedule", "bogus"), "'bogus'"),
    Row("cal-out-file", cal("--out", "afile"), "'afile'", late=True),
    Row("cal-out-unwritable", cal("--out", "afile/set"), "'afile/set'", late=True),
    Row("cal-pairs-file", cal("--pairs", "afile"), "'afile'", late=True),
    Row("cal-out-uri", cal("--out", "memory://sets/x"), "'memory://sets/x'"),
    Row("cal-rank-0", cal("--rank", "0"), "got 0"),
    Row("cal-alpha-0", cal("--alpha", "0"), "got 0.0"),
    Row("cal-lr-neg", cal("--lr", "-1"), "got -1.0"),
    Row("cal-lr-nan", cal("--lr", "nan"), "got nan"),
    Row("cal-epochs-0", cal("--epochs", "0"), "got 0"),
    Row("cal-eval-every-0", cal("--eval-every", "0"), "got 0"),
    Row("cal-patience-0", cal("--patience", "0"), "got 0"),
    Row("cal-holdout-all", cal("--holdout", "3"), "--holdout 3"),
    Row("cal-steps-0", cal("--steps", "0"), "got 0"),
    Row("cal-hunyuan-frames-4", cal("--frames", "4", model="toy:hunyuan_video"), "num_frames=4", late=True),
    Row("cal-resume-changed-lr", ["calibrate", "--model", "tiny:wan", "--prompts", "prompts.txt", "--steps", "4",
                                  "--schedule", "2", "--out", "cal/set", "--epochs", "2", "--eval-every", "1",
                                  "--rank", "2", "--lr", "0.002"], "lr: 0.001 -> 0.002", late=True),
    Row("cal-resume-pairs-deleted", ["calibrate", "--model", "tiny:wan", "--prompts", "prompts.txt", "--steps", "4",
                                     "--schedule", "2", "--out", "cal/set", "--pairs", "cal/fresh-pairs", "--epochs",
                                     "2", "--eval-every", "1", "--rank", "2", "--lr", "0.002"], "lr: 0.001 -> 0.002",
        late=True),
    # demo
    Row("demo-prompt-grammar", demo("--prompt", BAD_PROMPT), f"'{BAD_PROMPT}'", late=True),
    Row("demo-prompt-still", demo("--prompt", "a red circle at the top on a black background"), "still image"),
    Row("demo-prompt-colour", demo("--prompt", "a pink circle moving left on a black background"), "'pink'"),
    Row("demo-prompt-calibration", demo("--prompt", "a cyan triangle moving down on a navy background"),
        "is a calibration prompt"),
    Row("demo-steps-0", demo("--steps", "0"), "steps=0", late=True),
    Row("demo-steps-neg", demo("--steps", "-3"), "steps=-3", late=True),
    Row("demo-steps-1", demo("--steps", "1"), "steps=1"),
    Row("demo-interval-1", demo("--interval", "1"), "interval=1"),
    Row("demo-prompts-2", demo("--prompts", "2"), "calibration_prompts=2"),
    Row("demo-prompts-6", demo("--prompts", "6"), "calibration_prompts=6"),
    Row("demo-epochs-0", demo("--epochs", "0"), "epochs=0"),
    Row("demo-validation-0", demo("--validation-prompts", "0"), "validation_prompts=0"),
    Row("demo-out-file", demo("--out", "afile"), "'afile'", late=True),
    Row("demo-out-unwritable", demo("--out", "afile/demo"), "'afile/demo'", late=True),
]

R = GenerationRequest


def _partial_coverage():
    AdapterSet.load("sets/partial").check_coverage(SET_SCHEDULE, ("cond",))


def _record_full_schedule():
    from lbdist.toy.build import call_defaults

    record = RecordConfig(prompts=("a red circle",), call_kwargs=call_defaults("wan"))
    record_pairs(make_pipe("wan"), Schedule.full(4), record, "pairs-none", progress=False)


API_ROWS = [
    # GenerationRequest on construction
    Row("req-prompt-empty", lambda: R(""), "got ''"),
    Row("req-prompt-int", lambda: R(5), "got 5"),
    Row("req-prompt-surrogate", lambda: R("a \udcff circle"), "'a \\udcff circle'"),
    Row("req-negative-int", lambda: R("a", negative_prompt=5), "got 5"),
    Row("req-height-float", lambda: R("a", height=64.0), "got 64.0"),
    Row("req-height-bool", lambda: R("a", height=True), "got True"),
    Row("req-frames-0", lambda: R("a", num_frames=0), "got 0"),
    Row("req-steps-0", lambda: R("a", num_inference_steps=0), "got 0"),
    Row("req-guidance-inf", lambda: R("a", guidance_scale=math.inf), "got inf"),
    Row("req-guidance-str", lambda: R("a", guidance_scale="5"), "got '5'"),
    Row("req-seed-neg", lambda: R("a", seed=-1), "got -1"),
    Row("req-seed-huge", lambda: R("a", seed=2**64), f"got {2**64}"),
    Row("req-fps-0", lambda: R("a", fps=0), "got 0"),
    Row("req-schedule-syntax", lambda: R("a", schedule="5x"), "'5x'"),
    Row("req-schedule-int", lambda: R("a", schedule=5), "int 5"),
    Row("req-schedule-unicode-digit", lambda: R("a", schedule="\u0665"), "'\u0665'"),
    Row("req-adapters-empty", lambda: R("a", schedule="5", adapters=" "), "got ' '"),
    Row("req-adapters-no-schedule", lambda: R("a", adapters="wan-n5"), "'wan-n5'"),
    Row("req-allow-uncovered-str", lambda: R("a", allow_uncovered="yes"), "got 'yes'"),
    Row("req-format-webm", lambda: R("a", output_format="webm"), "got 'webm'"),
    Row("req-format-list", lambda: R("a", output_format=["mp4"]), "got ['mp4']"),
    Row("req-from-dict-list", lambda: R.from_dict(["prompt", "a"]), "list"),
    Row("req-from-dict-unknown", lambda: R.from_dict({"prompt": "a", "steps": 5}), "'steps'"),
    Row("req-from-dict-no-prompt", lambda: R.from_dict({"seed": 1}), "'prompt'"),
    Row("req-from-dict-int-key", lambda: R.from_dict({"prompt": "a", 7: 1}), "7"),
    # GenerationRequest.resolve against a model
    Row("resolve-not-info", lambda: R("a").resolve({"family": "wan"}), "dict"),
    Row("resolve-frames-4", lambda: R("a", num_frames=4).resolve(WAN), "num_frames=4"),
    Row("resolve-height-60", lambda: R("a", height=60).resolve(WAN), "height=60"),
    Row("resolve-image-frames", lambda: R("a", num_frames=5).resolve(FLUX), "num_frames=5"),
    Row("resolve-format", lambda: R("a", output_format="png").resolve(WAN), "'png'"),
    Row("resolve-schedule-1", lambda: R("a", schedule="1").resolve(WAN), "schedule '1' over 20 steps"),
    Row("resolve-schedule-range", lambda: R("a", schedule="steps:0,30").resolve(WAN), "[30]"),
    Row("resolve-bad-default", lambda: R("a").resolve(ModelInfo("wan", True, 16, 4, {"height": "64", "width": 64})),
        "got '64'"),
    Row("resolve-frames-default", lambda: R("a").resolve(ModelInfo("wan", True, 16, 4, {"height": 64, "width": 64,
                                                                                          "num_frames": 4})), "=4"),
    Row("info-multiple-0", lambda: ModelInfo("wan", True, 0, 4), "got 0"),
    Row("info-video-rule-0", lambda: ModelInfo("wan", True, 16, 0), "got 0"),
    # Schedule.parse
    Row("sched-text-int", lambda: Schedule.parse(5, 10), "int 5"),
    Row("sched-steps-0", lambda: Schedule.parse("5", 0), "got 0"),
    Row("sched-steps-str", lambda: Schedule.parse("5", "10"), "got '10'"),
    Row("sched-warmup-0", lambda: Schedule.parse("periodic:5:w=0", 10), "got 0"),
    Row("sched-too-long", lambda: Schedule.parse("1" * 20, 10), "'11111111111111111111'"),
    Row("sched-too-many-steps", lambda: Schedule.periodic(10**7, 5), "got 10000000"),
    # GeneratorConfig and Generator (degrees before any actor starts)
    Row("gcfg-sp-0", lambda: GeneratorConfig(sp_degree=0), "got 0"),
    Row("gcfg-device", lambda: GeneratorConfig(device="tpu"), "'tpu'"),
    Row("gcfg-dtype", lambda: GeneratorConfig(dtype="int8"), "'int8'"),
    Row("gcfg-ulysses-without-group", lambda: GeneratorConfig(ulysses_degree=2), "ulysses_degree=2"),
    Row("gcfg-worker-key-one-process", lambda: GeneratorConfig(worker={"cpus_per_workr": 2}), "'cpus_per_workr'"),
    Row("gcfg-degrees", lambda: GeneratorConfig(sp_degree=4, ulysses_degree=3), "ulysses(3)"),
    Row("gcfg-worker-key", lambda: GeneratorConfig(sp_degree=2, worker={"gpus": 1}), "'gpus'"),
    Row("gcfg-adapters-empty", lambda: GeneratorConfig(adapters={"a": ""}), "{'a': ''}"),
    Row("gcfg-adapters-str", lambda: GeneratorConfig(adapters="sets/good"), "'sets/good'"),
    Row("gcfg-threads-0", lambda: GeneratorConfig(threads=0), "got 0"),
    Row("gcfg-cache-str", lambda: GeneratorConfig(cache="big"), "str 'big'"),
    # an explicit Ulysses degree against the heads (left out, the layout rule would put the rest in ring)
    Row("gen-heads-tiny", lambda: Generator("tiny:wan", GeneratorConfig(sp_degree=3, ulysses_degree=3)), "ulysses(3)",
        late=True),
    Row("gen-heads-toy", lambda: Generator("toy:wan", GeneratorConfig(sp_degree=8, ulysses_degree=8)), "ulysses(8)",
        late=True),
    Row("gen-heads-folder", lambda: Generator("wanfolder", GeneratorConfig(sp_degree=3, ulysses_degree=3)),
        "ulysses(3)", late=True),
    # BridgeConfig, CacheLimits
    Row("bridge-schedule-str", lambda: BridgeConfig("5"), "str '5'"),
    Row("bridge-adapters-int", lambda: BridgeConfig(SET_SCHEDULE, adapters=5), "int 5"),
    Row("bridge-adapters-empty", lambda: BridgeConfig(SET_SCHEDULE, adapters=" "), "(' ')"),
    Row("bridge-allow-str", lambda: BridgeConfig(SET_SCHEDULE, allow_uncovered="no"), "'no'"),
    Row("cache-sets-0", lambda: CacheLimits(max_sets=0), "got 0"),
    Row("cache-bytes-neg", lambda: CacheLimits(max_bytes=-1), "got -1"),
    Row("cache-sets-float", lambda: CacheLimits(max_sets=1.5), "got 1.5"),
    # RecordConfig, TrainConfig, record_pairs
    Row("rec-prompts-str", lambda: RecordConfig(prompts="a red circle"), "'a red circle'"),
    Row("rec-prompts-empty", lambda: RecordConfig(prompts=()), "[]"),
    Row("rec-prompt-int", lambda: RecordConfig(prompts=("a", 5)), "got 5"),
    Row("rec-seeds-count", lambda: RecordConfig(prompts=("a", "b"), seeds=(1,)), "1 seeds for 2 prompts"),
    Row("rec-seeds-neg", lambda: RecordConfig(prompts=("a",), seeds=(-1,)), "got -1"),
    Row("rec-seeds-str", lambda: RecordConfig(prompts=("a",), seeds=("x",)), "got 'x'"),
    Row("rec-call-list", lambda: RecordConfig(prompts=("a",), call_kwargs=[]), "got []"),
    Row("rec-full-schedule", _record_full_schedule, "bridges no step", late=True),
    Row("train-rank-0", lambda: TrainConfig(rank=0), "got 0"),
    Row("train-alpha-str", lambda: TrainConfig(alpha="64"), "got '64'"),
    Row("train-lr-nan", lambda: TrainConfig(lr=math.nan), "got nan"),
    Row("train-epochs-float", lambda: TrainConfig(max_epochs=1.5), "got 1.5"),
    Row("train-eval-0", lambda: TrainConfig(eval_every=0), "got 0"),
    Row("train-refit-str", lambda: TrainConfig(refit="yes"), "got 'yes'"),
    Row("train-seed-neg", lambda: TrainConfig(seed=-1), "got -1"),
    # DemoConfig, run_demo
    Row("demo-cfg-interval", lambda: DemoConfig(interval=1), "interval=1"),
    Row("demo-cfg-steps-0", lambda: DemoConfig(steps=0), "steps=0", late=True),
    Row("demo-cfg-prompts-str", lambda: DemoConfig(calibration_prompts="3"), "calibration_prompts='3'"),
    Row("demo-cfg-grammar", lambda: DemoConfig(prompt=BAD_PROMPT), f"'{BAD_PROMPT}'", late=True),
    Row("demo-cfg-extra", lambda: DemoConfig(extra={"seed": 1}), "'seed'"),
    Row("demo-cfg-lr", lambda: DemoConfig(lr=0), "lr=0"),
    Row("demo-cfg-fps", lambda: DemoConfig(fps=0), "fps=0"),
    Row("demo-cfg-validation", lambda: DemoConfig(validation_prompts=21), "validation_prompts=21"),
    Row("demo-run-out-file", lambda: run_demo("afile", DemoConfig(model="tiny:wan", steps=4, interval=2)), "'afile'",
        late=True),
    # WorkerGroupConfig
    Row("wg-workers-0", lambda: WorkerGroupConfig(num_workers=0), "got 0"),
    Row("wg-ring", lambda: WorkerGroupConfig(num_workers=4, ring_degree=3), "ring(3)"),
    Row("wg-backend", lambda: WorkerGroupConfig(num_workers=2, backend="mpi"), "'mpi'"),
    Row("wg-cpus-str", lambda: WorkerGroupConfig(num_workers=2, cpus_per_worker="1"), "got '1'"),
    Row("wg-timeout-0", lambda: WorkerGroupConfig(num_workers=2, start_timeout_s=0), "got 0"),
    Row("wg-gpus-2", lambda: WorkerGroupConfig(num_workers=2, gpus_per_worker=2), "got 2"),
    Row("wg-env-str", lambda: WorkerGroupConfig(num_workers=2, env_vars="A=1"), "'A=1'"),
    # adapter sets (untrusted input)
    Row("set-relative", lambda: AdapterSet.load("sets/relative"), "'../partial/step001_cond.safetensors'", late=True),
    Row("set-absolute", lambda: AdapterSet.load("sets/absolute"), "'/etc/passwd'", late=True),
    Row("set-symlink", lambda: AdapterSet.load("sets/symlink"), "'step002_cond.safetensors'", late=True),
    Row("set-digest", lambda: AdapterSet.load("sets/digest"), "step004_cond.safetensors: sha256 mismatch", late=True),
    Row("set-no-bridges", lambda: AdapterSet.load("sets/nobridges"), "'bridges'", late=True),
    Row("set-garbage", lambda: AdapterSet.load("sets/garbage"), "step001_cond.safetensors", late=True),
    Row("set-partial", _partial_coverage, "covers 2 of 4 bridges", late=True),
    Row("set-local-typo", lambda: AdapterSet.load("adapters/missing"), "'adapters/missing'"),
]


def _timed(call):
    started = time.perf_counter()
    try:
        return call(), None
    except BaseException as err:  # noqa: BLE001 - the rows assert the type
        return None, err
    finally:
        _timed.elapsed = time.perf_counter() - started


def _cli(argv: list) -> int:
    try:
        return main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def test_the_table_has_at_least_60_bad_inputs():
    ids = [row.id for row in CLI_ROWS + API_ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    assert sum(row.late for row in CLI_ROWS + API_ROWS) >= 20


@pytest.mark.parametrize("row", CLI_ROWS, ids=lambda row: row.id)
def test_cli_refuses_with_exit_2_and_one_line_naming_the_value(row, capsys):
    code, _ = _timed(lambda: _cli(row.run))
    elapsed = _timed.elapsed
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and err.count(": error: ") == 1
    assert lines[-1].startswith(f"lbdist {row.run[0]}: error: ") and row.needle in lines[-1], lines[-1]
    if row.late:
        assert elapsed < LATE_S, f"{row.id}: refused after {elapsed:.2f} s"


@pytest.mark.parametrize("row", API_ROWS, ids=lambda row: row.id)
def test_api_refuses_with_a_value_error_naming_the_value(row):
    _, err = _timed(row.run)
    elapsed = _timed.elapsed
    assert isinstance(err, row.exc), f"{row.id}: expected {row.exc.__name__}, got {err!r}"
    message = str(err)
    assert row.needle in message and "\n" not in message, message
    if row.late:
        assert elapsed < LATE_S, f"{row.id}: refused after {elapsed:.2f} s"


SUBPROCESS_ROWS = [CLI_ROWS[i] for i, row in enumerate(CLI_ROWS) if row.id in (
    "gen-frames-0", "gen-out-webm", "gen-argparse-int", "cal-prompts-empty", "demo-prompt-grammar", "demo-steps-0")]


@pytest.mark.parametrize("row", SUBPROCESS_ROWS, ids=lambda row: row.id)
def test_the_command_line_exits_2_with_one_stderr_line(row, workspace):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lbdist", *row.run], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"lbdist {row.run[0]}: error: ") and row.needle in lines[0]
    assert elapsed < 30, f"{row.id}: {elapsed:.1f} s including the interpreter's start"


def test_a_resume_with_other_settings_records_nothing_first(workspace):
    """The adapter set's settings are compared before recording: with its pairs deleted (they are large), a rerun
    with another learning rate used to record every pair again, then be refused."""
    row = next(row for row in CLI_ROWS if row.id == "cal-resume-pairs-deleted")
    assert _cli(row.run) == 2
    assert not (workspace / "cal" / "fresh-pairs").exists()
