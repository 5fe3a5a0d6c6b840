"""Calibration cost on real-size transformers with random weights: recording pairs and training one bridge (what
`tools/bench_calibrate.py` sweeps).

A real diffusers pipeline is built around the real-size transformer (`realsize.bench_pipeline`, the family's small
VAE) and the recorder samples the calibration prompts with full compute. To fit a device budget, recording runs
`record_steps` steps of the same schedule pattern (interval N, so the same bridges per step), and the cost of all
T steps is extrapolated linearly from the measured per-step time (the step cost does not depend on T); every
extrapolated figure is labelled so. A plain full-compute generation through `Engine` gives the step cost without
recording. Then one bridge (step 1, branch cond) is trained from the recorded pairs (the first prompt trains, the
last is held out): seconds per optimiser step with one pair, the family's reference recipe extrapolated from it
(`ModelSpec.recipe.max_epochs` epochs x 5 pairs), and a real early-stopped run capped in seconds.
"""
from __future__ import annotations

import resource
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import realsize
from .timing import free_cuda_cache, peak_gb, reset_peak, sync

PROMPTS = ("a red circle moves left", "a blue square moves up", "a green triangle moves right",
           "a yellow circle moves down", "a red square moves right")
REFERENCE_PAIRS = 5  # the authors' recipe trains each bridge on 5 calibration prompts


@dataclass(frozen=True)
class CostOptions:
    """What one calibration-cost measurement does.

    prompts: calibration prompts recorded (1..5). steps: T of the schedule the figures are for. interval: N.
    record_steps: steps recorded per prompt (the rest extrapolated). plain_steps: steps of the plain generation.
    rank: LoRA rank. timing_epochs: optimiser steps timed with one pair. early_stop_cap_s: seconds the
    early-stopped run may take.
    """

    prompts: int = 2
    steps: int = 50
    interval: int = 5
    record_steps: int = 10
    plain_steps: int = 3
    rank: int = 32
    timing_epochs: int = 20
    early_stop_cap_s: float = 60.0

    def __post_init__(self):
        if not 1 <= self.prompts <= len(PROMPTS):
            raise ValueError(f"prompts must be in 1..{len(PROMPTS)}, got {self.prompts!r}")
        if type(self.interval) is not int or self.interval < 2:
            raise ValueError(f"interval must be an integer >= 2, got {self.interval!r}")
        if not 2 <= self.record_steps <= self.steps:
            raise ValueError(f"need 2 <= record_steps ({self.record_steps}) <= steps ({self.steps}): the recorded "
                             "steps must hold the bridge that is trained (step 1)")
        for name in ("plain_steps", "rank", "timing_epochs"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.early_stop_cap_s > 0:
            raise ValueError(f"early_stop_cap_s must be > 0, got {self.early_stop_cap_s!r}")


def host_rss_gb() -> float:
    """Peak resident memory of this process (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def plain_step_s(loaded, steps: int) -> float:
    """Seconds per denoising step of a full-compute generation through `Engine` (its first prompt)."""
    from ..generation import Engine, GenerationRequest

    result = Engine(loaded).run(GenerationRequest(PROMPTS[0], num_inference_steps=steps))
    return result.timings["denoise"] / steps


def record(loaded, opts: CostOptions, pairs_dir: Path, device) -> dict:
    """Record the pairs of `opts.prompts` prompts over `record_steps` steps; time, memory, bytes, extrapolations."""
    from ..bridge import Schedule
    from ..calibrate import RecordConfig, record_pairs

    shutil.rmtree(pairs_dir, ignore_errors=True)
    call = {k: v for k, v in loaded.call_defaults.items() if k != "num_inference_steps"}
    config = RecordConfig(prompts=PROMPTS[:opts.prompts], call_kwargs=call)
    reset_peak(device)
    sync(device)
    started = time.perf_counter()
    record_pairs(loaded.pipe, Schedule.periodic(opts.record_steps, opts.interval), config, pairs_dir, progress=False)
    sync(device)
    seconds = time.perf_counter() - started
    disk = sum(f.stat().st_size for f in pairs_dir.rglob("*") if f.is_file())
    recorded = opts.prompts * opts.record_steps
    per_step = seconds / recorded
    return {"prompts_recorded": opts.prompts, "steps_recorded_per_prompt": opts.record_steps,
            "seconds": round(seconds, 2), "seconds_per_step": round(per_step, 3), "peak_gpu_gb": peak_gb(device),
            "host_peak_rss_gb": round(host_rss_gb(), 2), "bytes_on_disk": disk,
            "bytes_per_recorded_step": int(disk / recorded),
            "extrapolated_5_prompts_all_steps_s": round(per_step * REFERENCE_PAIRS * opts.steps, 1),
            "extrapolated_5_prompts_bytes": int(disk / recorded * REFERENCE_PAIRS * opts.steps)}


def train_one(transformer, opts: CostOptions, pairs_dir: Path, device, bridges: int) -> dict:
    """Train bridge (step 1, cond): optimiser-step time, the reference recipe extrapolated, an early-stopped run."""
    from ..calibrate import TrainConfig, load_pairs, train_bridge
    from ..models import get_spec

    spec = get_spec(transformer)
    final = spec.final_block(transformer)
    pairs = load_pairs(pairs_dir, 1, "cond", device)
    train, held = pairs[:1], pairs[-1:]
    base = TrainConfig(rank=opts.rank, alpha=2.0 * opts.rank).resolved(spec.family)
    timing = replace(base, max_epochs=opts.timing_epochs, eval_every=10**6)
    warm = replace(timing, max_epochs=3)
    train_bridge(final, spec, train, [], warm, spec.lora_targets)  # warm-up: kernel choice, allocation
    reset_peak(device)
    _, info = train_bridge(final, spec, train, [], timing, spec.lora_targets)
    step_s = info["seconds"] / opts.timing_epochs
    train_peak = peak_gb(device)
    _, early = train_bridge(final, spec, train, held, replace(base, max_seconds=opts.early_stop_cap_s),
                            spec.lora_targets)
    epochs = spec.recipe.max_epochs
    return {"lora_rank": opts.rank, "lr": base.lr, "seconds_per_optimizer_step_one_pair": round(step_s, 4),
            "peak_gpu_gb": train_peak, "reference_recipe": f"{epochs} epochs x {REFERENCE_PAIRS} pairs",
            "reference_recipe_s_extrapolated": round(step_s * REFERENCE_PAIRS * epochs, 1),
            "bridges_in_schedule": bridges,
            "reference_all_bridges_gpu_hours_extrapolated": round(step_s * REFERENCE_PAIRS * epochs * bridges / 3600,
                                                                  2),
            "early_stopped_run": early, "early_stop_cap_s": opts.early_stop_cap_s}


def measure_model(name: str, opts: CostOptions, device, dtype: torch.dtype, workdir: Path) -> dict:
    """Recording and training cost of one real size (pairs written under `workdir`, removed afterwards)."""
    from ..bridge import Schedule

    spec, size = realsize.lookup(name)
    model = realsize.build_transformer(name, device, dtype)
    loaded = realsize.loaded_pipeline(name, model, opts.steps, device, dtype, vae="small")
    branches = len(spec.branches) if size.guidance > 1 else 1
    pairs_dir = Path(workdir) / f"{name}-pairs"
    result = {"model": name, "family": spec.family, "shape": size.label(),
              "latent_tokens": realsize.latent_tokens(name), "branches": branches, "steps": opts.steps,
              "interval": opts.interval,
              "plain_full_step_s": round(plain_step_s(loaded, opts.plain_steps), 3)}
    result["record"] = record(loaded, opts, pairs_dir, device)
    result["record"]["overhead_vs_plain_step"] = round(result["record"]["seconds_per_step"]
                                                       / result["plain_full_step_s"], 3)
    bridges = len(Schedule.periodic(opts.steps, opts.interval).bridged_steps) * branches
    result["train"] = train_one(model, opts, pairs_dir, device, bridges)
    shutil.rmtree(pairs_dir, ignore_errors=True)
    del loaded, model
    free_cuda_cache()
    return result
