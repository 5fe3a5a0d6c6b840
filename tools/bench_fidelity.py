"""Fidelity of LearniBridge and its peers against full compute, compared at equal speedup, on the toy models.

    python tools/bench_fidelity.py --families wan hunyuan_video flux --prompts 8 --out tools/results/fidelity

For each family: calibrate LearniBridge for every interval of its sweep from calibration prompts (training
combinations of the toy data set), and MagCache's magnitude ratios with diffusers' calibration mode on the
same prompts; then run full compute and every method x knob (`lbdist.evaluate.METHODS`) on held-out
evaluation prompts (combinations never trained on) with the same seeds. Each generation runs under a
`CostMeter`: speedup = full-compute transformer FLOPs / executed FLOPs, plus attention / FFN / block run
counts, so a peer that skips nothing shows it. Metrics against full compute: PSNR and SSIM of the decoded
frames, relative L2 of the final latents, and prompt adherence (`lbdist.toy.metric`). Writes
`results.json`, `table.md` and `plots/<family>.png` to --out, and says whether the targets were met.

Resumable: every (family, method, knob) cell is written atomically to `<out>/cells/` when done and skipped
on a rerun with the same model weights, prompts, steps and settings; reference generations, adapter sets
and MagCache ratios are cached under `<out>/work/`. `--quick` runs tiny random-weight pipelines, 2 prompts,
8 steps and 2 knobs per method in about a minute (the CI smoke test); its numbers mean nothing.
`--model toy-random` runs the toy architectures with random weights (for timing before the trained toys
exist); fidelity numbers need `--model toy` (the bundled trained models, lbdist/toy/weights).
Cost (estimated from timed parts on 2 CPU cores): about 3 hours for the three toys at 8 prompts, about 1.5 of
them LearniBridge calibration (Wan alone ~1 hour: 428 bridges); --families, --prompts, --knobs,
--train-epochs bound it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import warnings
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bridge import environment  # noqa: E402

from lbdist.bridge import AdapterSet, LoraSettings, Schedule, config_digest  # noqa: E402
from lbdist.calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters  # noqa: E402
from lbdist.evaluate import METHODS, CostMeter, MethodSetup, PeerSettings, calibrate_mag_ratios  # noqa: E402
from lbdist.evaluate.metrics import psnr, relative_l2, ssim  # noqa: E402
from lbdist.evaluate.report import (Targets, check_targets, finite_or_none, markdown, plot_family,  # noqa: E402
                                    summarize_method)
from lbdist.generate import Generation, call_arguments, run_generation  # noqa: E402
from lbdist.io import atomic_write  # noqa: E402
from lbdist.models import get_spec  # noqa: E402
from lbdist.pipelines import LoadedPipeline  # noqa: E402

FAMILIES = ("wan", "hunyuan_video", "flux")
MODELS = ("toy", "toy-random", "tiny")
KIND = {"wan": "video", "hunyuan_video": "video", "flux": "image"}
CALIBRATION_SEED = 1000  # calibration prompt i uses seed 1000 + i; evaluation prompt i uses seed i
# LoRA rank 8 adds about 12% to the FLOPs of the toys' 128-wide final-block linears (rank 32 adds 1-4% on the
# released models' 1536-5120-wide blocks); the adapters' FLOPs count against LearniBridge's speedup.
TOY_TRAIN = TrainConfig(rank=8, alpha=16.0, lr=2e-3, max_epochs=150, eval_every=25, patience=2, holdout_prompts=0)
QUICK_TRAIN = TrainConfig(rank=4, alpha=8.0, lr=1e-3, max_epochs=30, eval_every=10, patience=3, holdout_prompts=0)


@dataclass(frozen=True)
class FidelityConfig:
    """One benchmark run.

    model: `toy` (bundled trained toys), `toy-random` (their architecture, random weights) or `tiny`.
    families: model families to run.
    prompts: evaluation prompts per family (held-out combinations; more is steadier and slower).
    calibration_prompts: LearniBridge / MagCache calibration prompts (3-5; training combinations).
    steps: denoising steps of full compute; None takes the model's default (50 for the toys).
    methods: methods to run (default all of `lbdist.evaluate.METHODS`).
    knobs: method -> knob values overriding the method's default sweep.
    quick: use each method's two-point `quick_knobs`.
    train: LearniBridge calibration (LoRA rank, epochs, ...).
    settings: the peers' fixed settings.
    targets: the bar LearniBridge is held to.
    keep_pairs: keep recorded calibration pairs after training (they take ~50 MB per interval on Wan).
    """

    model: str = "toy"
    families: tuple[str, ...] = FAMILIES
    prompts: int = 8
    calibration_prompts: int = 4
    steps: int | None = None
    methods: tuple[str, ...] = tuple(METHODS)
    knobs: dict = field(default_factory=dict)
    quick: bool = False
    train: TrainConfig = TOY_TRAIN
    settings: PeerSettings = PeerSettings()
    targets: Targets = Targets()
    keep_pairs: bool = False

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"families must be among {FAMILIES}, got {list(self.families)}")
        bad = [m for m in (*self.methods, *self.knobs) if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; known: {list(METHODS)}")
        if not 1 <= self.prompts <= 36:
            raise ValueError(f"prompts must be in [1, 36] (the held-out video combinations), got {self.prompts}")
        if not 1 <= self.calibration_prompts <= 8:
            raise ValueError(f"calibration_prompts must be in [1, 8], got {self.calibration_prompts}")
        if self.steps is not None and self.steps < 4:
            raise ValueError(f"steps must be >= 4, got {self.steps}")


def load(model: str, family: str) -> LoadedPipeline:
    """The pipeline of `family` for `model` (see FidelityConfig.model), on the CPU, progress bars off."""
    from lbdist.toy.build import CALL_DEFAULTS, build_pipeline
    from lbdist.toy.dataset import GRAMMAR_WORDS

    if model == "toy":
        from lbdist.toy import load_toy

        toy = load_toy(family)
        pipe, defaults = toy.pipe, dict(toy.defaults)
    else:
        size = "tiny" if model == "tiny" else "toy"
        pipe, defaults = build_pipeline(family, size, words=GRAMMAR_WORDS), dict(CALL_DEFAULTS[family][size])
        defaults.setdefault("num_inference_steps", 8 if size == "tiny" else 50)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, family, f"{model}:{family}", defaults)


def fingerprint(pipe) -> str:
    """A digest of every weight of the pipeline: cached results are reused only for the same model."""
    h = hashlib.sha256()
    for name, module in sorted(pipe.components.items()):
        if isinstance(module, torch.nn.Module):
            for key, tensor in sorted(module.state_dict().items()):
                h.update(f"{name}.{key}".encode())
                h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def _write_json(path: Path, data) -> None:
    os.chmod(atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1))), 0o644)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


class FamilyRun:
    """Everything one family's benchmark needs: pipeline, prompts, caches, reference generations."""

    def __init__(self, config: FidelityConfig, family: str, out: Path):
        from lbdist.toy.dataset import calibration_prompts, evaluation_prompts

        self.config, self.family, self.out = config, family, out
        self.loaded = load(config.model, family)
        self.steps = int(config.steps or self.loaded.call_defaults.get("num_inference_steps", 50))
        kind = KIND[family]
        self.prompts = evaluation_prompts(kind, min(config.prompts, len(evaluation_prompts(kind))))
        self.seeds = list(range(len(self.prompts)))
        self.calibration = calibration_prompts(kind, config.calibration_prompts)
        self.calibration_seeds = [CALIBRATION_SEED + i for i in range(len(self.calibration))]
        self.fp = fingerprint(self.loaded.pipe)
        self.work = out / "work" / f"{family}-{self.fp}"
        self.branches = ("cond", "uncond") if family == "wan" and self.loaded.call_defaults.get(
            "guidance_scale", 1.0) > 1.0 else ("cond",)
        self.key = {"fingerprint": self.fp, "steps": self.steps, "prompts": self.prompts, "seeds": self.seeds,
                    "calibration": self.calibration, "settings": asdict(config.settings)}
        self.reference = self._references()
        self.full = self._mean([r["record"] for r in self.reference])

    # --- generations -----------------------------------------------------------------------------------
    def generate(self, prompt: str, seed: int, steps: int) -> tuple[Generation, dict]:
        with CostMeter(self.loaded.pipe.transformer) as meter:
            gen = run_generation(self.loaded, prompt, steps=steps, seed=seed, keep_latents=True)
        return gen, dict(meter.counts)

    def _references(self) -> list[dict]:
        from safetensors.torch import load_file, save_file

        from lbdist.toy.metric import adherence

        refs = []
        for prompt, seed in zip(self.prompts, self.seeds):
            name = hashlib.sha256(f"{prompt}|{seed}|{self.steps}".encode()).hexdigest()[:16]
            tensors, meta = self.work / "reference" / f"{name}.safetensors", self.work / "reference" / f"{name}.json"
            record = _read_json(meta)
            if record is None or not tensors.is_file():
                gen, counts = self.generate(prompt, seed, self.steps)
                record = {"prompt": prompt, "seed": seed, "adherence": adherence(gen.frames, prompt).score, **counts}
                data = {"frames": torch.from_numpy(np.ascontiguousarray(gen.frames)), "latents": gen.latents.float().contiguous()}
                atomic_write(tensors, lambda tmp, d=data: save_file(d, tmp))
                _write_json(meta, record)
            data = load_file(str(tensors))
            refs.append({"frames": data["frames"].numpy(), "latents": data["latents"], "record": record})
        return refs

    @staticmethod
    def _mean(records: list[dict]) -> dict:
        keys = ("adherence", "flops", "calls", "blocks", "attention", "ffn")
        return {k: float(np.mean([r[k] for r in records])) for k in keys}

    # --- calibration -----------------------------------------------------------------------------------
    def mag_ratios(self) -> tuple[float, ...]:
        path = self.work / f"magcache_T{self.steps}_{_key_digest(self.calibration)}.json"
        cached = _read_json(path)
        if cached is None:
            run = lambda prompt, seed: run_generation(self.loaded, prompt, steps=self.steps, seed=seed)  # noqa: E731
            ratios = calibrate_mag_ratios(run, self.loaded.pipe, self.calibration, self.calibration_seeds, self.steps)
            cached = {"steps": self.steps, "prompts": self.calibration, "ratios": list(ratios)}
            _write_json(path, cached)
        return tuple(cached["ratios"])

    def _train_root(self) -> Path:
        return self.work / f"adapters-T{self.steps}-{_key_digest([asdict(self.config.train), self.calibration])}"

    def adapters(self, interval: int) -> AdapterSet:
        """The calibrated adapter set for `Schedule.periodic(steps, interval)`, calibrating it if needed."""
        pipe, root = self.loaded.pipe, self._train_root()
        schedule, out = Schedule.periodic(self.steps, interval), root / f"N{interval}"
        if (out / "lbdist_adapters.json").is_file():
            done = AdapterSet.load(out)
            if not done.missing() and set(done.branches) == set(self.branches):
                return done
        started = time.perf_counter()
        call = {k: v for k, v in call_arguments(self.loaded, self.steps, None).items() if k != "num_inference_steps"}
        pairs = root / "pairs" / f"N{interval}"
        record_pairs(pipe, schedule, RecordConfig(tuple(self.calibration), tuple(self.calibration_seeds), call),
                     pairs, progress=False)
        reused = self._reuse_bridges(schedule, out, root)
        adapters = train_adapters(pipe.transformer, pairs, out, self.config.train, progress=False)
        adapters.extra["reused_bridges"] = reused
        adapters.save(out)
        if not self.config.keep_pairs:
            shutil.rmtree(pairs, ignore_errors=True)
        print(f"  calibrated {self.family} N={interval}: {len(adapters.weights)} adapters "
              f"({reused} reused from other intervals) in {time.perf_counter() - started:.0f} s", flush=True)
        return adapters

    def _reuse_bridges(self, schedule: Schedule, out: Path, root: Path) -> int:
        """Seed `out` with adapters of identical bridges from finished sets of other intervals.

        A bridge (anchor a, step b, branch) sees the same recorded pairs under every schedule that has it
        (recording is full-compute sampling of the same prompts and seeds) and the trainer seeds it by
        (step, branch), so training it again would reproduce the same adapter.
        """
        if (out / "lbdist_adapters.json").is_file():
            return 0
        transformer = self.loaded.pipe.transformer
        spec = get_spec(transformer)
        train = self.config.train.resolved(spec.family)
        lora = LoraSettings(train.rank, train.alpha, spec.lora_targets)
        digest = config_digest(transformer)
        weights, training = {}, {}
        for other_dir in sorted(root.glob("N*")):
            if not (other_dir / "lbdist_adapters.json").is_file() or other_dir == out:
                continue
            other = AdapterSet.load(other_dir)
            if (other.config_digest, other.lora) != (digest, lora):
                continue
            for (step, branch), state in other.weights.items():
                if step in schedule.bridged_steps and other.schedule.plan(step).anchor == schedule.plan(step).anchor:
                    weights[(step, branch)] = state
                    training[f"{step}_{branch}"] = other.extra.get("training", {}).get(f"{step}_{branch}", {})
        if weights:
            AdapterSet(spec.family, spec.transformer_class.__name__, digest, schedule, self.branches, lora, weights,
                       {"training": training}).save(out)
        return len(weights)

    def setup(self, methods: tuple[str, ...]) -> MethodSetup:
        mag = self.mag_ratios() if "magcache" in methods else None
        return MethodSetup(self.family, self.steps, self.branches, adapters=self.adapters, mag_ratios=mag,
                           settings=self.config.settings)

    # --- cells -----------------------------------------------------------------------------------------
    def cell_key(self, method: str) -> dict:
        key = dict(self.key)
        if method == "learnibridge":
            key["train"] = asdict(self.config.train)
        return json.loads(json.dumps(key))  # as it reads back from a cell file (tuples become lists)

    def run_cell(self, method_name: str, knob: float, setup: MethodSetup) -> dict:
        from lbdist.toy.metric import adherence

        method = METHODS[method_name]
        pipe, started = self.loaded.pipe, time.perf_counter()
        steps = method.steps(knob, setup)
        record = method.apply(pipe, knob, setup)
        rows = []
        try:
            for ref, prompt, seed in zip(self.reference, self.prompts, self.seeds):
                gen, counts = self.generate(prompt, seed, steps)
                rows.append({"prompt": prompt, "seed": seed, "psnr": psnr(gen.frames, ref["frames"]),
                             "ssim": ssim(gen.frames, ref["frames"]), "rel_l2": relative_l2(gen.latents, ref["latents"]),
                             "adherence": adherence(gen.frames, prompt).score, **counts, "bridge": gen.stats})
        finally:
            method.remove(pipe)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "rel_l2", "adherence", "flops")}
        evaluations = {k: float(np.mean([r[k] for r in rows])) / self.full[k] for k in ("attention", "ffn", "blocks")}
        return {"key": self.cell_key(method_name), "family": self.family, "method": method_name, "knob": knob,
                "steps": steps, "config": record, "speedup": self.full["flops"] / mean["flops"],
                "skips": all(r["flops"] < self.full["flops"] for r in rows),
                "mean": {k: finite_or_none(v) for k, v in mean.items()}, "evaluations": evaluations,
                "per_prompt": [{k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                "seconds": round(time.perf_counter() - started, 1)}


def knobs_for(config: FidelityConfig, name: str) -> tuple:
    method = METHODS[name]
    if name in config.knobs:
        return tuple(config.knobs[name])
    return method.quick_knobs if config.quick else method.knobs


def run_family(config: FidelityConfig, family: str, out: Path) -> dict:
    fam = FamilyRun(config, family, out)
    print(f"{family}: {fam.steps} steps, {len(fam.prompts)} evaluation prompts, model {fam.fp}, "
          f"full-compute adherence {fam.full['adherence']:.3f}", flush=True)
    setup = fam.setup(config.methods)
    methods = {}
    for name in config.methods:
        method = METHODS[name]
        reason = method.not_applicable(setup)
        entry = {"label": method.label, "knob": method.knob, "description": method.description,
                 "applicable": reason is None, "reason": reason}
        if reason is None:
            cells = []
            for knob in knobs_for(config, name):
                path = out / "cells" / family / name / f"{knob:g}.json"
                cell = _read_json(path)
                if cell is None or cell.get("key") != fam.cell_key(name):
                    cell = fam.run_cell(name, knob, setup)
                    _write_json(path, cell)
                    print(f"  {name:16} {knob:>6g}  x{cell['speedup']:.2f}  PSNR {cell['mean']['psnr'] or math.inf:6.2f}"
                          f"  adherence {cell['mean']['adherence']:.3f}  ({cell['seconds']:.0f} s)", flush=True)
                cells.append(cell)
            entry["config"] = cells[0]["config"] if cells else None
            entry.update(summarize_method(cells))
        methods[name] = entry
    summaries = {n: m for n, m in methods.items() if m["applicable"]}
    return {"steps": fam.steps, "fingerprint": fam.fp, "branches": list(fam.branches),
            "evaluation_prompts": fam.prompts, "seeds": fam.seeds, "calibration_prompts": fam.calibration,
            "full": fam.full, "methods": methods, "targets": check_targets(summaries, fam.full["adherence"], config.targets)}


def parse_knobs(items) -> dict:
    out = {}
    for item in items or ():
        name, _, values = item.partition("=")
        try:
            out[name] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--knobs {item!r}: expected method=v1,v2,... with numbers") from None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", choices=MODELS)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--prompts", type=int, default=8, help="evaluation prompts per family")
    ap.add_argument("--calibration-prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 50 for the toys)")
    ap.add_argument("--knobs", nargs="*", default=[], metavar="METHOD=V1,V2", help="override a method's sweep")
    ap.add_argument("--out", default="tools/results/fidelity")
    ap.add_argument("--train-epochs", type=int, default=None,
                    help=f"LearniBridge epochs cap per bridge (default {TOY_TRAIN.max_epochs}; training dominates the run)")
    ap.add_argument("--train-rank", type=int, default=None, help=f"LearniBridge LoRA rank (default {TOY_TRAIN.rank})")
    ap.add_argument("--keep-pairs", action="store_true")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: tiny models, 2 prompts, 8 steps, 2 knobs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # FasterCache warns on every apply
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # adapter sets swap on one block
    train = TOY_TRAIN
    if args.train_epochs is not None:
        train = replace(train, max_epochs=args.train_epochs)
    if args.train_rank is not None:
        train = replace(train, rank=args.train_rank, alpha=2.0 * args.train_rank)
    overrides = dict(model=args.model, prompts=args.prompts, calibration_prompts=args.calibration_prompts,
                     steps=args.steps, train=train)
    if args.quick:
        overrides = dict(model="tiny", prompts=min(args.prompts, 2), calibration_prompts=2, steps=args.steps or 8,
                         quick=True, train=QUICK_TRAIN)
    config = FidelityConfig(families=tuple(args.families), methods=tuple(args.methods), knobs=parse_knobs(args.knobs),
                            keep_pairs=args.keep_pairs, **overrides)
    out = Path(args.out)
    started = time.perf_counter()
    results = {"benchmark": "bench_fidelity", **environment(), "config": {
        "model": config.model, "prompts": config.prompts, "calibration_prompts": config.calibration_prompts,
        "train": asdict(config.train), "settings": asdict(config.settings), "targets": asdict(config.targets),
        "quick": config.quick}, "families": {}}
    for family in config.families:
        results["families"][family] = run_family(config, family, out)
        _write_json(out / "results.json", results)
    for family, fam in results["families"].items():
        plot_family(family, fam, out / "plots" / f"{family}.png")
    os.chmod(atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(markdown(results))), 0o644)
    results["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(out / "results.json", results)
    print(f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}/ in {results['seconds']:.0f} s")
    for family, fam in results["families"].items():
        t = fam["targets"]
        if t.get("evaluated"):
            print(f"{family}: curve above peers {t['curve_above_every_peer']['met']}, "
                  f"PSNR margin at 5x {t['psnr_margin_at']['margin_db']} dB (met {t['psnr_margin_at']['met']}), "
                  f"adherence ratio {t['adherence_at']['ratio']} (met {t['adherence_at']['met']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
