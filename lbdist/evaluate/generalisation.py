"""Does calibration generalise? The fair protocol of issue 17: held-out prompts and seeds, paired intervals.

    report = run_generalisation(GeneralisationConfig(family="hunyuan_video", intervals=(5, 6, 7)))

Per family (a bundled toy, `toy:<family>`) and interval N (`Schedule.periodic(T, N, warmup)`): record the
calibration samples (training-combination prompts x seeds) and the validation samples (other training
combinations, for early stopping) with full compute, calibrate with the given recipe, then generate every
evaluation sample (held-out combinations x seeds, used nowhere else) with full compute (once), the
uncalibrated bridge (cached input, the paper's), the uncalibrated bridge on the extrapolated input, and the
calibrated bridge, all on the same schedule (warm-up included). Each sample is compared with full compute of
the same prompt and seed: relative L2 of the final latents and PSNR of the decoded frames. Intervals are 95%
percentile bootstraps that resample prompts (a prompt's seeds stay together); `paired` holds the per-sample
differences calibrated - baseline with their interval (rel. L2: below zero is better; PSNR: above zero).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import psnr, relative_l2

EVALUATION_SEED = 2_000_000  # evaluation prompt i, seed j: EVALUATION_SEED + 1000 * j + i
VALIDATION_POOL_SEED = 7  # validation prompts: training combinations drawn with this seed, minus calibration
VALIDATION_SEED = 5000  # validation prompt i: VALIDATION_SEED + i
METHODS = ("uncalibrated", "extrapolated", "calibrated", "taylorseer_lite")  # what each interval can measure
# (README "Calibration recipe"); taylorseer_lite: the peer (lbdist.evaluate.peers) at cache interval N


@dataclass(frozen=True)
class GeneralisationConfig:
    """family: a toy family (`toy:<family>`). intervals: the N to run. warmup: full steps at the start.
    calibration_prompts x seeds_per_prompt: calibration samples (seeds 1000 + i, + 7919 j).
    validation_prompts: early-stopping samples (one seed each). evaluation_prompts x evaluation_seeds: held out.
    train: the TrainConfig (recipe, rank, ...). bootstrap: resamples per interval."""

    family: str
    intervals: tuple[int, ...] = (5, 6, 7)
    warmup: int = 1
    calibration_prompts: int = 4
    seeds_per_prompt: int = 1
    validation_prompts: int = 6
    evaluation_prompts: int = 16
    evaluation_seeds: int = 2
    train: object = None
    bootstrap: int = 4000
    methods: tuple[str, ...] = ("uncalibrated", "extrapolated", "calibrated")
    model: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("calibration_prompts", "seeds_per_prompt", "evaluation_prompts", "evaluation_seeds", "warmup"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.intervals or any(type(n) is not int or n < 2 for n in self.intervals):
            raise ValueError(f"intervals must be integers >= 2, got {self.intervals!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods must be among {METHODS}, got {bad[0]!r}")


@dataclass(frozen=True)
class Split:
    calibration: list[str]
    calibration_seeds: list[int]
    validation: list[str]
    validation_seeds: list[int]
    evaluation: list[tuple[str, int]]


def split(kind: str, config: GeneralisationConfig) -> Split:
    """Calibration, validation and evaluation samples: disjoint prompts, disjoint seeds."""
    from ..toy.dataset import calibration_prompts, evaluation_prompts

    calibration = calibration_prompts(kind, config.calibration_prompts)
    pool = [p for p in calibration_prompts(kind, 40, seed=VALIDATION_POOL_SEED) if p not in calibration]
    evaluation = evaluation_prompts(kind, config.evaluation_prompts)
    if set(evaluation) & (set(calibration) | set(pool)):
        raise ValueError("evaluation prompts overlap calibration or validation prompts")
    validation = pool[:config.validation_prompts]
    samples = [(p, EVALUATION_SEED + 1000 * j + i) for i, p in enumerate(evaluation)
               for j in range(config.evaluation_seeds)]
    return Split(calibration, [1000 + i for i in range(len(calibration))], validation,
                 [VALIDATION_SEED + i for i in range(len(validation))], samples)


class Sampler:
    """Generations of one toy pipeline: full compute (cached per sample) and bridged ones."""

    def __init__(self, model: str):
        from ..generation import GenerationRequest, load_pipeline
        from ..generation.loading import model_info

        self.loaded = load_pipeline(model, device="cpu", dtype="float32")
        self.pipe = self.loaded.pipe
        self.pipe.set_progress_bar_config(disable=True)
        self.info = model_info(self.pipe, self.loaded.call_defaults, self.loaded.source)
        self.steps = int(self.loaded.call_defaults.get("num_inference_steps", 50))
        request = GenerationRequest("a", num_inference_steps=self.steps).resolve(self.info)
        self.call = request.call_kwargs(self.info)
        self.call.pop("num_inference_steps")
        self.branches = self.info.branches if (self.call.get("guidance_scale") or 0) > 1 else self.info.branches[:1]
        self.references: dict = {}

    def generate(self, prompt: str, seed: int, schedule=None, adapters=None, bridge_input=None, peer=None):
        """(frames, final latents) of one generation; `schedule` None: full compute. `peer`: (method name of
        lbdist.evaluate.peers, its knob), run instead of the bridge with fresh state per call."""
        from ..bridge import BridgeConfig, apply_bridge

        config = None if schedule is None or peer else BridgeConfig(schedule, adapters=adapters,
                                                                    bridge_input=bridge_input, branches=self.branches)
        apply_bridge(self.pipe, config=config)
        if peer:
            from .peers import MethodSetup, get_method

            method = get_method(peer[0])
            method.apply(self.pipe, peer[1], MethodSetup(self.info.family, self.steps, tuple(self.branches)))
            try:
                return self._sample(prompt, seed)
            finally:
                method.remove(self.pipe)
        return self._sample(prompt, seed)

    def _sample(self, prompt: str, seed: int):
        import torch

        from ..bridge import reset_bridge

        final = {}

        def keep(pipe, i, t, tensors):
            final["latents"] = tensors["latents"].detach().clone()
            return {}

        try:
            with torch.no_grad():
                out = self.pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                                num_inference_steps=self.steps, callback_on_step_end=keep,
                                callback_on_step_end_tensor_inputs=["latents"], **self.call)
        except BaseException:
            reset_bridge(self.pipe)
            raise
        frames = np.asarray(out.frames[0] if self.info.is_video else out.images, dtype=np.float32)
        return frames, final["latents"]

    def reference(self, prompt: str, seed: int):
        if (prompt, seed) not in self.references:
            self.references[prompt, seed] = self.generate(prompt, seed)
        return self.references[prompt, seed]

    def rows(self, samples, schedule, adapters=None, bridge_input=None, peer=None) -> list[dict]:
        rows = []
        for prompt, seed in samples:
            frames, latents = self.reference(prompt, seed)
            got_frames, got_latents = self.generate(prompt, seed, schedule, adapters, bridge_input, peer)
            rows.append({"prompt": prompt, "seed": seed, "rel_l2": relative_l2(got_latents, latents),
                         "psnr": psnr(got_frames, frames)})
        return rows


def _bootstrap(values: np.ndarray, groups: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    keys = np.unique(groups)
    members = [np.flatnonzero(groups == k) for k in keys]
    sums = np.array([values[m].sum() for m in members])
    counts = np.array([len(m) for m in members])
    picks = rng.integers(0, len(keys), size=(n, len(keys)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summary(rows: list[dict], metrics=("rel_l2", "psnr"), n: int = 4000, seed: int = 0) -> dict:
    """metric -> {"mean", "lo", "hi"}: mean over samples with a 95% bootstrap interval over prompts."""
    groups = np.array([r["prompt"] for r in rows])
    out = {}
    for m in metrics:
        v = np.array([r[m] for r in rows], dtype=float)
        lo, hi = _bootstrap(v, groups, n, seed)
        out[m] = {"mean": float(v.mean()), "lo": lo, "hi": hi}
    return out


def paired_difference(rows: list[dict], baseline: list[dict], metrics=("rel_l2", "psnr"), n: int = 4000,
                      seed: int = 0) -> dict:
    """metric -> mean of (rows - baseline) per sample with its 95% bootstrap interval over prompts, and
    `better`: whether the whole interval is on the better side (rel. L2 below zero, PSNR above)."""
    key = lambda r: (r["prompt"], r["seed"])  # noqa: E731
    base = {key(r): r for r in baseline}
    if set(base) != {key(r) for r in rows}:
        raise ValueError("paired difference needs the same (prompt, seed) samples on both sides")
    diffs = [{"prompt": r["prompt"], **{m: r[m] - base[key(r)][m] for m in metrics}} for r in rows]
    out = summary(diffs, metrics, n, seed)
    for m, s in out.items():
        s["better"] = bool(s["hi"] < 0) if m == "rel_l2" else bool(s["lo"] > 0)
    return out


def calibrate_interval(sampler: Sampler, schedule, parts: Split, config: GeneralisationConfig, work: str) -> tuple:
    """Record and train one adapter set; returns (adapter set, {record_s, train_s, bridges})."""
    from ..bridge import remove_bridge
    from ..calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters

    record = RecordConfig(tuple(parts.calibration), tuple(parts.calibration_seeds), dict(sampler.call),
                          seeds_per_prompt=config.seeds_per_prompt, validation_prompts=tuple(parts.validation),
                          validation_seeds=tuple(parts.validation_seeds))
    remove_bridge(sampler.pipe)
    started = time.perf_counter()
    record_pairs(sampler.pipe, schedule, record, f"{work}/pairs", progress=False)
    recorded = time.perf_counter()
    adapters = train_adapters(sampler.pipe.transformer, f"{work}/pairs", f"{work}/adapters",
                              config.train or TrainConfig(), progress=False)
    done = time.perf_counter()
    info = adapters.extra["training"].values()
    cost = {"record_s": round(recorded - started, 1), "train_s": round(done - recorded, 1),
            "bridges": len(adapters.weights), "recipe": adapters.extra["recipe"],
            "train_s_per_bridge": round((done - recorded) / max(1, len(adapters.weights)), 2),
            "best_epoch_mean": float(np.mean([i["best_epoch"] for i in info])) if info else None,
            "watched_loss_ratio_median": float(np.median([i["loss_best"] / i["loss_uncalibrated"] for i in info
                                                          if i["loss_uncalibrated"] > 0])) if info else None}
    return f"{work}/adapters", cost


def run_generalisation(config: GeneralisationConfig, log=print, on_interval=None) -> dict:
    """The report (see the module docstring); `on_interval(report)` after each interval (partial results)."""
    from ..bridge import Schedule

    sampler = Sampler(config.model or f"toy:{config.family}")
    parts = split("video" if sampler.info.is_video else "image", config)
    train = config.train
    report = {"family": config.family, "steps": sampler.steps, "warmup": config.warmup,
              "protocol": {k: v for k, v in asdict(config).items() if k not in ("train", "extra")},
              "train_config": asdict(train) if train is not None else None,
              "calibration_prompts": parts.calibration, "calibration_seeds": parts.calibration_seeds,
              "validation_prompts": parts.validation, "evaluation_samples": parts.evaluation, "intervals": {}}
    for n in config.intervals:
        schedule = Schedule.periodic(sampler.steps, n, warmup=config.warmup)
        entry = {"schedule": schedule.description, "full_steps": len(schedule.full_steps), "rows": {}}
        with tempfile.TemporaryDirectory(prefix="lbdist-generalisation-") as work:
            adapters = None
            if "calibrated" in config.methods:
                adapters, entry["calibration"] = calibrate_interval(sampler, schedule, parts, config, work)
                log({"interval": n, "calibration": entry["calibration"]})
            for method in config.methods:
                started = time.perf_counter()
                kwargs = {"calibrated": dict(adapters=adapters), "extrapolated": dict(bridge_input="extrapolate"),
                          "uncalibrated": {}, "taylorseer_lite": dict(peer=("taylorseer_lite", n))}[method]
                entry["rows"][method] = sampler.rows(parts.evaluation, schedule, **kwargs)
                entry.setdefault("seconds", {})[method] = round(time.perf_counter() - started, 1)
                entry.setdefault("summary", {})[method] = summary(entry["rows"][method], n=config.bootstrap)
                log({"interval": n, "method": method, **entry["summary"][method]})
        rows = entry["rows"]
        entry["paired"] = {f"calibrated-{b}": paired_difference(rows["calibrated"], rows[b], n=config.bootstrap)
                           for b in ("uncalibrated", "extrapolated", "taylorseer_lite")
                           if "calibrated" in rows and b in rows}
        log({"interval": n, "paired": entry["paired"]})
        report["intervals"][str(n)] = entry
        if on_interval is not None:
            on_interval(report)
    return report


def recipe_train(recipe: str, rank: int = 8, epochs: int = 300, objective: str | None = None,
                 bridge_input: str | None = None):
    """The toy TrainConfig of a recipe: rank `rank` (the toys' final block is small; the reference uses 32 on the
    real models), lr 2e-3, evaluations every 5 epochs, patience 3 (the settings the recipe was chosen with);
    `objective` / `bridge_input` override the recipe's."""
    from ..calibrate import TrainConfig

    return TrainConfig(recipe=recipe, objective=objective, bridge_input=bridge_input, rank=rank, alpha=2.0 * rank,
                       lr=2e-3, max_epochs=epochs, eval_every=5, patience=3, min_delta=1e-3, refit=False)


def slim(report: dict) -> dict:
    """The report without per-sample rows (small enough to commit)."""
    out = dict(report)
    out["intervals"] = {n: {k: v for k, v in e.items() if k != "rows"} for n, e in report["intervals"].items()}
    return out


def table(report: dict) -> str:
    """Markdown rows (family, N, each of METHODS: rel. L2 and PSNR with 95% intervals, "-" if not run; paired
    differences calibrated - uncalibrated and calibrated - extrapolated) of a report."""
    def cell(s, fmt):
        return f"{s['mean']:{fmt}} [{s['lo']:{fmt}}, {s['hi']:{fmt}}]"

    lines = []
    for n, entry in report["intervals"].items():
        summ, paired = entry.get("summary", {}), entry.get("paired", {})
        values = " | ".join(f"{cell(summ[m]['rel_l2'], '.4f')}, {cell(summ[m]['psnr'], '.1f')} dB" if m in summ
                            else "-" for m in METHODS)
        diffs = " | ".join(f"{cell(paired[k]['rel_l2'], '+.4f')}, {cell(paired[k]['psnr'], '+.1f')} dB" if k in paired
                           else "-" for k in ("calibrated-uncalibrated", "calibrated-extrapolated"))
        lines.append(f"| {report['family']} | {n} | {values} | {diffs} |")
    return "\n".join(lines)
