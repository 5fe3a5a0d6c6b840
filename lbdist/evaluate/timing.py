"""Timing loops of the benchmarks and the record that goes with every number (card, commit, date, versions).

Every timed region is CUDA-synchronised on both sides, so a number is wall time of finished GPU work. Medians
are taken over `repeats` calls after `warmup` untimed ones. `denoise` is the T-step Euler flow-matching loop the
speed benchmarks time, with one `cache_context` per transformer call as diffusers pipelines use (so the bridge
and diffusers' caches see their step and branch).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from .realsize import sigmas


def sync(device=None) -> None:
    """Wait for the GPU (no-op on the CPU or when `device` is not a CUDA device)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


def times_s(fn: Callable[[], object], repeats: int, warmup: int = 2, device=None) -> list[float]:
    """Seconds of each of `repeats` synchronised calls of `fn`, after `warmup` untimed calls."""
    if type(repeats) is not int or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2, device=None) -> tuple[float, list[float]]:
    """(median, every measurement) in milliseconds, as `times_s`."""
    ms = [t * 1e3 for t in times_s(fn, repeats, warmup, device)]
    return statistics.median(ms), ms


@dataclass(frozen=True)
class LoopTiming:
    """One timed denoising loop: final latents, wall seconds, and per-step milliseconds (CUDA events; empty on CPU)."""

    latents: torch.Tensor
    seconds: float
    step_ms: list[float] = field(default_factory=list)


def denoise(model: torch.nn.Module, latents: torch.Tensor, kwargs_at: Callable[[torch.Tensor, float], dict],
            steps: int, *, negative: dict | None = None, guidance: float = 5.0) -> LoopTiming:
    """A `steps`-step Euler flow-matching loop through `model(**kwargs_at(x, sigma))` inside
    `cache_context("cond", step_index=i)`. With `negative` (keyword overrides of the unconditional call, e.g. its
    text states) each step also runs the `uncond` branch and combines them with classifier-free `guidance`."""
    sig, x, events = sigmas(steps), latents, []
    use_events = latents.device.type == "cuda"
    sync(latents.device)
    start = time.perf_counter()
    for i in range(steps):
        if use_events:
            events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            events[-1][0].record()
        kwargs = kwargs_at(x, sig[i])
        with model.cache_context("cond", step_index=i, num_inference_steps=steps):
            v = model(**kwargs)[0]
        if negative is not None:
            with model.cache_context("uncond", step_index=i, num_inference_steps=steps):
                v_u = model(**{**kwargs, **negative})[0]
            v = v_u + guidance * (v - v_u)
        x = x + (sig[i + 1] - sig[i]) * v
        if use_events:
            events[-1][1].record()
    sync(latents.device)
    seconds = time.perf_counter() - start
    return LoopTiming(x, seconds, [s.elapsed_time(e) for s, e in events])


def peak_gb(device=None) -> float | None:
    """Peak GPU memory allocated since the last reset, in GiB (None on the CPU)."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def reset_peak(device=None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def free_cuda_cache() -> None:
    """Collect garbage (hook registries hold reference cycles) and return cached GPU blocks to the driver."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def commit() -> str:
    """`LBDIST_COMMIT` if set (a copy without .git), else the commit of the lbdist checkout, else "unknown"."""
    if os.environ.get("LBDIST_COMMIT"):
        return os.environ["LBDIST_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def environment(*packages: str) -> dict:
    """What a result needs beside its numbers: the card (GPU name, else the CPU), the commit, the UTC date, and the
    versions of torch and `packages` (default diffusers and peft)."""
    host = platform.processor() or platform.machine() or "cpu"
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else host
    record = {"card": card, "host_cpu": host, "commit": commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__}
    record.update({p: _version(p) for p in packages or ("diffusers", "peft")})
    return record


def write_json(path: str | os.PathLike, data, indent: int = 2) -> str:
    """Write `data` as JSON atomically (readers see the old file or the whole new one)."""
    from ..storage import write_text

    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def read_json(path: str | os.PathLike):
    """The JSON at `path`, or None if there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None
