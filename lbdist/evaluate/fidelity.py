"""The fidelity sweep on small models: LearniBridge and its peers against full compute at equal speedup (what
`tools/bench_fidelity.py` runs), one (family, method, knob) cell at a time.

For a family: calibrate LearniBridge for every interval of its sweep from calibration prompts, and MagCache's
magnitude ratios with diffusers' calibration mode on the same prompts; then generate with full compute and with
every method x knob on held-out evaluation prompts and the same seeds. Every generation goes through
`lbdist.generation.Engine` (the method's request fields carry the bridge schedule and adapter set) under a
`CostMeter`: speedup = full-compute transformer FLOPs / executed FLOPs. Metrics against full compute: PSNR and
SSIM of the frames, relative L2 of the final latents, prompt adherence (`lbdist.toy.metric`).

Resumable: a finished cell is written atomically to `<out>/cells/<family>/<method>/<knob>.json` with a key
(model fingerprint, prompts, seeds, steps, settings) and reused while the key matches; references, adapter sets
and MagCache ratios are cached under `<out>/work/`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..calibrate import TrainConfig
from .peers import METHODS, MethodSetup, PeerSettings
from .report import Targets, finite_or_none
from .timing import read_json, write_json

MODELS = ("toy", "toy-random", "tiny")
CALIBRATION_SEED = 1000  # calibration prompt i uses seed 1000 + i; evaluation prompt i uses seed i
# LoRA rank 8 adds about 12% to the FLOPs of the toys' 128-wide final-block linears (rank 32 adds 1-4% on the
# released models' 1536-5120-wide blocks); the adapters' FLOPs count against LearniBridge's speedup.
TOY_TRAIN = TrainConfig(rank=8, alpha=16.0, lr=2e-3, max_epochs=150, eval_every=25, patience=2, holdout_prompts=0)
QUICK_TRAIN = TrainConfig(rank=4, alpha=8.0, lr=1e-3, max_epochs=30, eval_every=10, patience=3, holdout_prompts=0)


def toy_families() -> tuple[str, ...]:
    from ..toy.build import FAMILIES

    return tuple(FAMILIES)


@dataclass(frozen=True)
class FidelityConfig:
    """One fidelity run.

    model: `toy` (bundled trained toys), `toy-random` (their architecture, random weights) or `tiny`.
    families: model families to run (those with toys).
    prompts: evaluation prompts per family (held-out combinations; more is steadier and slower).
    calibration_prompts: LearniBridge / MagCache calibration prompts (3-5; training combinations).
    steps: denoising steps of full compute; None takes the model's default (50 for the toys).
    methods: methods to run (default all of `lbdist.evaluate.METHODS`).
    knobs: method -> knob values overriding the method's default sweep.
    quick: use each method's two-point `quick_knobs`.
    train: LearniBridge calibration (LoRA rank, epochs, ...).
    settings: the peers' fixed settings.
    targets: the bar the first method is held to (`report.Targets`); None: no verdict.
    keep_pairs: keep recorded calibration pairs after training (they take ~50 MB per interval on Wan).
    """

    model: str = "toy"
    families: tuple[str, ...] = field(default_factory=toy_families)
    prompts: int = 8
    calibration_prompts: int = 4
    steps: int | None = None
    methods: tuple[str, ...] = tuple(METHODS)
    knobs: dict = field(default_factory=dict)
    quick: bool = False
    train: TrainConfig = TOY_TRAIN
    settings: PeerSettings = PeerSettings()
    targets: Targets | None = None
    keep_pairs: bool = False

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        bad = [f for f in self.families if f not in toy_families()]
        if bad or not self.families:
            raise ValueError(f"families must be among {toy_families()}, got {list(self.families)}")
        bad = [m for m in (*self.methods, *self.knobs) if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; known: {list(METHODS)}")
        if not 1 <= self.prompts <= 36:
            raise ValueError(f"prompts must be in [1, 36] (the held-out video combinations), got {self.prompts}")
        if not 1 <= self.calibration_prompts <= 8:
            raise ValueError(f"calibration_prompts must be in [1, 8], got {self.calibration_prompts}")
        if self.steps is not None and self.steps < 4:
            raise ValueError(f"steps must be >= 4, got {self.steps}")
        if self.targets is not None and not isinstance(self.targets, Targets):
            raise ValueError(f"targets must be a report.Targets or None, got {type(self.targets).__name__}")

    def record(self) -> dict:
        """The configuration as it goes into results.json."""
        return {"model": self.model, "prompts": self.prompts, "calibration_prompts": self.calibration_prompts,
                "train": asdict(self.train), "settings": asdict(self.settings),
                "targets": asdict(self.targets) if self.targets else None, "quick": self.quick}


def load(model: str, family: str):
    """The `LoadedPipeline` of `family` for `model` (see FidelityConfig.model), on the CPU, progress bars off."""
    from ..generation.loading import LoadedPipeline
    from ..toy.build import build_pipeline, call_defaults
    from ..toy.dataset import GRAMMAR_WORDS

    if model == "toy":
        from ..toy import load_toy

        toy = load_toy(family)
        pipe, defaults = toy.pipe, dict(toy.defaults)
    else:
        size = "tiny" if model == "tiny" else "toy"
        pipe, defaults = build_pipeline(family, size, words=GRAMMAR_WORDS), call_defaults(family, size)
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


def key_digest(key) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def branches_of(loaded) -> tuple[str, ...]:
    """The guidance branches the pipeline runs as separate calls at its default guidance."""
    from ..models import get_spec_by_family

    spec = get_spec_by_family(loaded.family)
    cfg = len(spec.branches) > 1 and float(loaded.call_defaults.get("guidance_scale", 1.0)) > 1.0
    return tuple(spec.branches) if cfg else ("cond",)


def mean_of(records: list[dict], keys=("adherence", "flops", "calls", "blocks", "attention", "ffn")) -> dict:
    return {k: float(np.mean([r[k] for r in records])) for k in keys}


class FamilyRun:
    """Everything one family's sweep needs: the engine over its pipeline, prompts, caches, reference generations."""

    def __init__(self, config: FidelityConfig, family: str, out: Path):
        from ..generation import Engine
        from ..models import get_spec_by_family
        from ..toy.dataset import calibration_prompts, evaluation_prompts

        self.config, self.family, self.out = config, family, Path(out)
        self.loaded = load(config.model, family)
        self.engine = Engine(self.loaded)
        self.steps = int(config.steps or self.loaded.call_defaults.get("num_inference_steps", 50))
        kind = get_spec_by_family(family).output
        self.prompts = evaluation_prompts(kind, min(config.prompts, len(evaluation_prompts(kind))))
        self.seeds = list(range(len(self.prompts)))
        self.calibration = calibration_prompts(kind, config.calibration_prompts)
        self.calibration_seeds = [CALIBRATION_SEED + i for i in range(len(self.calibration))]
        self.fp = fingerprint(self.loaded.pipe)
        self.work = self.out / "work" / f"{family}-{self.fp}"
        self.branches = branches_of(self.loaded)
        self.key = {"fingerprint": self.fp, "steps": self.steps, "prompts": self.prompts, "seeds": self.seeds,
                    "calibration": self.calibration, "settings": asdict(config.settings)}
        self._adapters: dict[int, str] = {}
        self.reference = self._references()
        self.full = mean_of([r["record"] for r in self.reference])

    # --- generations -----------------------------------------------------------------------------------
    def request(self, prompt: str, seed: int, fields: dict | None = None):
        from ..generation import GenerationRequest

        return GenerationRequest(prompt, seed=seed, **{"num_inference_steps": self.steps, **(fields or {})})

    def generate(self, prompt: str, seed: int, fields: dict | None = None):
        """(GenerationResult with final latents, executed-cost counts) of one generation through the engine."""
        from .cost import CostMeter

        with CostMeter(self.loaded.pipe.transformer) as meter:
            result = self.engine.run(self.request(prompt, seed, fields), keep_latents=True)
        return result, dict(meter.counts)

    def _references(self) -> list[dict]:
        from safetensors.torch import load_file, save_file

        from ..storage import write_file
        from ..toy.metric import adherence

        refs = []
        for prompt, seed in zip(self.prompts, self.seeds):
            name = hashlib.sha256(f"{prompt}|{seed}|{self.steps}".encode()).hexdigest()[:16]
            tensors, meta = self.work / "reference" / f"{name}.safetensors", self.work / "reference" / f"{name}.json"
            record = read_json(meta)
            if record is None or not tensors.is_file():
                gen, counts = self.generate(prompt, seed)
                record = {"prompt": prompt, "seed": seed, "adherence": adherence(gen.frames, prompt).score, **counts}
                data = {"frames": torch.from_numpy(np.ascontiguousarray(gen.frames)),
                        "latents": gen.latents.float().contiguous()}
                write_file(tensors, lambda tmp, d=data: save_file(d, tmp))
                write_json(meta, record, indent=1)
            data = load_file(str(tensors))
            refs.append({"frames": data["frames"].numpy(), "latents": data["latents"], "record": record})
        return refs

    # --- calibration -----------------------------------------------------------------------------------
    def mag_ratios(self) -> tuple[float, ...]:
        from .peers import calibrate_mag_ratios

        path = self.work / f"magcache_T{self.steps}_{key_digest(self.calibration)}.json"
        cached = read_json(path)
        if cached is None:
            run = lambda prompt, seed: self.engine.run(self.request(prompt, seed))  # noqa: E731
            ratios = calibrate_mag_ratios(run, self.loaded.pipe, self.calibration, self.calibration_seeds, self.steps)
            cached = {"steps": self.steps, "prompts": self.calibration, "ratios": list(ratios)}
            write_json(path, cached, indent=1)
        return tuple(cached["ratios"])

    def train_root(self) -> Path:
        return self.work / f"adapters-T{self.steps}-{key_digest([asdict(self.config.train), self.calibration])}"

    def adapters(self, interval: int) -> str:
        """The directory of the adapter set calibrated for `Schedule.periodic(steps, interval)` (calibrated now if
        it is not there yet)."""
        if interval not in self._adapters:
            self._adapters[interval] = calibrate_interval(self, interval)
        return self._adapters[interval]

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
        """One (method, knob) over every evaluation prompt: metrics against the references, speedup, evaluations."""
        method, started = METHODS[method_name], time.perf_counter()
        record = method.apply(self.loaded.pipe, knob, setup)
        fields = method.request(knob, setup)
        try:
            rows = [self._row(ref, prompt, seed, fields) for ref, prompt, seed in zip(self.reference, self.prompts,
                                                                                       self.seeds)]
        finally:
            method.remove(self.loaded.pipe)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "rel_l2", "adherence", "flops")}
        evaluations = {k: float(np.mean([r[k] for r in rows])) / self.full[k] for k in ("attention", "ffn", "blocks")}
        return {"key": self.cell_key(method_name), "family": self.family, "method": method_name, "knob": knob,
                "steps": method.steps(knob, setup), "config": record, "speedup": self.full["flops"] / mean["flops"],
                "skips": all(r["flops"] < self.full["flops"] for r in rows),
                "mean": {k: finite_or_none(v) for k, v in mean.items()}, "evaluations": evaluations,
                "per_prompt": [{k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in r.items()}
                               for r in rows],
                "seconds": round(time.perf_counter() - started, 1)}

    def _row(self, ref: dict, prompt: str, seed: int, fields: dict) -> dict:
        from ..toy.metric import adherence
        from .metrics import psnr, relative_l2, ssim

        gen, counts = self.generate(prompt, seed, fields)
        return {"prompt": prompt, "seed": seed, "psnr": psnr(gen.frames, ref["frames"]),
                "ssim": ssim(gen.frames, ref["frames"]), "rel_l2": relative_l2(gen.latents, ref["latents"]),
                "adherence": adherence(gen.frames, prompt).score, **counts, "bridge": dict(gen.calls)}


def calibrate_interval(run: FamilyRun, interval: int) -> str:
    """Calibrate (or find finished) the adapter set of one interval under `run.train_root()`; its directory."""
    from ..bridge import AdapterSet, Schedule, remove_bridge
    from ..calibrate import RecordConfig, record_pairs, train_adapters

    root = run.train_root()
    schedule, out = Schedule.periodic(run.steps, interval), root / f"N{interval}"
    if (out / "lbdist_adapters.json").is_file():
        done = AdapterSet.load(out)
        if not done.missing() and set(done.branches) == set(run.branches):
            return str(out)
    started = time.perf_counter()
    call = run.request(run.calibration[0], 0).resolve(run.engine.info).call_kwargs(run.engine.info)
    call.pop("num_inference_steps", None)
    pairs = root / "pairs" / f"N{interval}"
    record_pairs(run.loaded.pipe, schedule, RecordConfig(tuple(run.calibration), tuple(run.calibration_seeds), call),
                 pairs, progress=False)
    reused = reuse_bridges(run, schedule, out, root)
    remove_bridge(run.loaded.pipe)  # resident adapter sets off the final block before training on it
    adapters = train_adapters(run.loaded.pipe.transformer, pairs, out, run.config.train, progress=False)
    adapters.extra["reused_bridges"] = reused
    adapters.save(out)
    if not run.config.keep_pairs:
        shutil.rmtree(pairs, ignore_errors=True)
    print(f"  calibrated {run.family} N={interval}: {len(adapters.weights)} adapters "
          f"({reused} reused from other intervals) in {time.perf_counter() - started:.0f} s", flush=True)
    return str(out)


def reuse_bridges(run: FamilyRun, schedule, out: Path, root: Path) -> int:
    """Seed `out` with adapters of identical bridges from finished sets of other intervals.

    A bridge (anchor a, step b, branch) sees the same recorded pairs under every schedule that has it (recording is
    full-compute sampling of the same prompts and seeds) and the trainer seeds it by (step, branch), so training it
    again would reproduce the same adapter.
    """
    from ..bridge import AdapterSet, LoraSettings, config_digest
    from ..models import get_spec

    if (out / "lbdist_adapters.json").is_file():
        return 0
    transformer = run.loaded.pipe.transformer
    spec = get_spec(transformer)
    train = run.config.train.resolved(spec.family)
    lora, digest = LoraSettings(train.rank, train.alpha, spec.lora_targets), config_digest(transformer)
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
        AdapterSet(spec.family, spec.transformer_class.__name__, digest, schedule, run.branches, lora, weights,
                   {"training": training}).save(out)
    return len(weights)


def knobs_for(config: FidelityConfig, name: str) -> tuple:
    method = METHODS[name]
    if name in config.knobs:
        return tuple(config.knobs[name])
    return method.quick_knobs if config.quick else method.knobs


def method_cells(fam: FamilyRun, name: str, setup: MethodSetup, log=print) -> list[dict]:
    """Every knob's cell of one method: read back when finished with the same key, run otherwise."""
    cells = []
    for knob in knobs_for(fam.config, name):
        path = fam.out / "cells" / fam.family / name / f"{knob:g}.json"
        cell = read_json(path)
        if cell is None or cell.get("key") != fam.cell_key(name):
            cell = fam.run_cell(name, knob, setup)
            write_json(path, cell, indent=1)
            psnr_value = cell["mean"]["psnr"] if cell["mean"]["psnr"] is not None else float("inf")
            log(f"  {name:16} {knob:>6g}  x{cell['speedup']:.2f}  PSNR {psnr_value:6.2f}"
                f"  adherence {cell['mean']['adherence']:.3f}  ({cell['seconds']:.0f} s)")
        cells.append(cell)
    return cells


def run_family(config: FidelityConfig, family: str, out: Path, log=print) -> dict:
    """One family's whole sweep: per method its curve summary, and the verdict against `config.targets`."""
    from .report import check_targets, summarize_method

    fam = FamilyRun(config, family, out)
    log(f"{family}: {fam.steps} steps, {len(fam.prompts)} evaluation prompts, model {fam.fp}, "
        f"full-compute adherence {fam.full['adherence']:.3f}")
    setup = fam.setup(config.methods)
    methods = {}
    for name in config.methods:
        method = METHODS[name]
        reason = method.not_applicable(setup)
        entry = {"label": method.label, "knob": method.knob, "description": method.description,
                 "applicable": reason is None, "reason": reason}
        if reason is None:
            cells = method_cells(fam, name, setup, log)
            entry["config"] = cells[0]["config"] if cells else None
            entry.update(summarize_method(cells))
        methods[name] = entry
    summaries = {n: m for n, m in methods.items() if m["applicable"]}
    verdict = (check_targets(summaries, fam.full["adherence"], config.targets) if config.targets is not None
               else {"evaluated": False, "reason": "no targets given"})
    return {"steps": fam.steps, "fingerprint": fam.fp, "branches": list(fam.branches),
            "evaluation_prompts": fam.prompts, "seeds": fam.seeds, "calibration_prompts": fam.calibration,
            "full": fam.full, "methods": methods, "targets": verdict}
