"""Does a calibrated adapter set generalise beyond its calibration prompts? (`tools/check_generalisation.py`)

For one model and schedule: record the calibration pairs once, train an adapter set per learning rate, and
measure the relative L2 of the final latents against full compute, with the uncalibrated and the calibrated
bridge, on the calibration prompts themselves (same seeds) and on held-out evaluation prompts. Calibration that
fits but does not generalise lowers the first and raises the second. Every generation goes through
`lbdist.generation.Engine`; each full-compute reference and each uncalibrated error is computed once.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from .metrics import relative_l2


@dataclass(frozen=True)
class GeneralisationConfig:
    """model: a model reference (`toy:<family>`, a folder, ...). interval: N of `Schedule.periodic(T, N)`.
    lrs: learning rates tried. epochs: epoch cap per bridge. calibration_prompts: how many (seeds 0, 1, ...).
    heldout: held-out evaluation prompts (seed 0 each). rank: LoRA rank (alpha 2 rank)."""

    model: str
    interval: int = 6
    lrs: tuple[float, ...] = (2e-3,)
    epochs: int = 80
    calibration_prompts: int = 3
    heldout: int = 2
    rank: int = 8

    def __post_init__(self):
        if type(self.interval) is not int or self.interval < 2:
            raise ValueError(f"interval must be an integer >= 2, got {self.interval!r}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must be learning rates > 0, got {self.lrs!r}")
        for name in ("epochs", "calibration_prompts", "heldout", "rank"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")


class _Errors:
    """Relative L2 of bridged final latents against full compute, references and uncalibrated runs cached."""

    def __init__(self, engine, schedule: str):
        self.engine, self.schedule, self.references, self.uncalibrated = engine, schedule, {}, {}

    def latents(self, prompt: str, seed: int, **fields):
        from ..generation import GenerationRequest

        return self.engine.run(GenerationRequest(prompt, seed=seed, **fields), keep_latents=True).latents

    def __call__(self, prompt: str, seed: int, adapters: str | None) -> float:
        if (prompt, seed) not in self.references:
            self.references[prompt, seed] = self.latents(prompt, seed)
        if adapters is None and (prompt, seed) in self.uncalibrated:
            return self.uncalibrated[prompt, seed]
        error = round(relative_l2(self.latents(prompt, seed, schedule=self.schedule, adapters=adapters),
                                  self.references[prompt, seed]), 5)
        if adapters is None:
            self.uncalibrated[prompt, seed] = error
        return error


def check_generalisation(config: GeneralisationConfig, log=print) -> dict:
    """The report: per learning rate, the errors on calibration and held-out prompts, uncalibrated and calibrated."""
    from ..bridge import Schedule, remove_bridge
    from ..calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters
    from ..generation import Engine, GenerationRequest, load_pipeline
    from ..toy.dataset import calibration_prompts, evaluation_prompts

    loaded = load_pipeline(config.model, device="cpu", dtype="float32")
    engine = Engine(loaded)
    kind = "video" if engine.info.is_video else "image"
    steps = int(loaded.call_defaults.get("num_inference_steps", 50))
    schedule = Schedule.periodic(steps, config.interval)
    calib = calibration_prompts(kind, config.calibration_prompts)
    seeds = tuple(range(len(calib)))
    held = evaluation_prompts(kind)[:config.heldout]
    call = GenerationRequest(calib[0], num_inference_steps=steps).resolve(engine.info).call_kwargs(engine.info)
    call.pop("num_inference_steps")
    errors = _Errors(engine, f"periodic:{config.interval}")
    report = {"family": loaded.family, "interval": config.interval, "steps": steps, "epochs": config.epochs,
              "calibration_prompts": calib, "heldout_prompts": held, "runs": []}
    with tempfile.TemporaryDirectory(prefix="lbdist-generalisation-") as work:
        started = time.perf_counter()
        record_pairs(loaded.pipe, schedule, RecordConfig(tuple(calib), seeds, call), f"{work}/pairs", progress=False)
        record_seconds = time.perf_counter() - started  # the pairs do not depend on the learning rate
        for lr in config.lrs:
            started = time.perf_counter()
            train = TrainConfig(rank=config.rank, alpha=2.0 * config.rank, lr=lr, max_epochs=config.epochs,
                                eval_every=25, patience=2, holdout_prompts=0)
            remove_bridge(loaded.pipe)  # resident adapter sets off the final block before training on it
            train_adapters(loaded.pipe.transformer, f"{work}/pairs", f"{work}/adapters-{lr}", train, progress=False)
            run = {"lr": lr, "calibration_seconds": round(record_seconds + time.perf_counter() - started, 1)}
            for split, prompts, split_seeds in (("calibration", calib, seeds), ("heldout", held, (0,) * len(held))):
                for label, adapters in (("uncalibrated", None), ("calibrated", f"{work}/adapters-{lr}")):
                    run[f"{split}_{label}"] = [errors(p, s, adapters) for p, s in zip(prompts, split_seeds)]
            log(run)
            report["runs"].append(run)
    return report
