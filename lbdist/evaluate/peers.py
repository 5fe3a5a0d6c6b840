"""The acceleration methods the benchmarks compare: one registry, each method with one knob and an
`apply(pipe, knob, setup)` / `remove(pipe)` pair.

| method            | knob      | what it skips                                                               |
| ----------------- | --------- | --------------------------------------------------------------------------- |
| `learnibridge`    | interval  | blocks 0..L-2 between full steps; final block + per-step LoRA (calibrated)  |
| `bridge_uncal`    | interval  | the same without adapters                                                   |
| `taylorseer`      | interval  | attention and FFN modules, predicted by a Taylor series between refreshes   |
| `taylorseer_lite` | interval  | every block (returns zeros); the output projection is Taylor-predicted      |
| `fbcache`         | threshold | blocks 1..L-1 when the first block's residual changed less than threshold   |
| `magcache`        | threshold | every block while the accumulated magnitude-ratio error stays under it      |
| `fastercache`     | interval  | self-attention modules, extrapolated from the last two computed outputs     |
| `pab`             | interval  | self-attention modules, broadcast from the last computed output             |
| `fewer_steps`     | steps     | whole denoising steps (the scheduler spreads fewer steps over the same path)|

The diffusers caches are applied with `transformer.enable_cache(config)` and each family's module identifiers
(`ModelSpec.taylorseer_modules`, `ModelSpec.attention_modules`), chosen so that they match real modules
(diffusers 0.42's TaylorSeer defaults, `^blocks.*attn` under `re.fullmatch`, match no Wan module and would skip
nothing). `apply` attaches a method to a pipeline (or to anything with a `.transformer`) and returns a record of
what was configured, including how many modules got a hook, for the benchmark reports. `request` gives the
`GenerationRequest` fields the method needs (the bridge's schedule and adapter set, a step count), so a
generation through `lbdist.generation.Engine` configures the same thing: the engine reconfigures the bridge
from every request.

Where a cache cannot apply faithfully, `Method.not_applicable(setup)` says why instead of faking it:
PyramidAttentionBroadcast and FasterCache keep one state per attention module, not per `cache_context`,
so in a pipeline that runs the guidance branches as separate calls (WanPipeline with CFG) the uncond call
would reuse the cond call's attention output; FasterCache's own CFG cache also needs the branches batched
as `[uncond, cond]`, which none of these pipelines builds. On guidance-distilled FLUX and HunyuanVideo
(one call per step) both apply, with FasterCache in its `is_guidance_distilled` mode.
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..bridge import AdapterSet, BridgeConfig, Schedule, apply_bridge, get_bridge
from ..models import families, get_spec_by_family

_OURS = ("lbdist_",)


def taylorseer_modules(family: str) -> tuple[str, ...]:
    """TaylorSeer's `re.fullmatch` identifiers for `family`: every block's attention and feed-forward modules."""
    return tuple(get_spec_by_family(family).taylorseer_modules)


def attention_modules(family: str) -> tuple[str, ...]:
    """PAB / FasterCache `re.search` identifiers for `family`: the blocks' self-attention modules."""
    return tuple(get_spec_by_family(family).attention_modules)


@dataclass(frozen=True)
class PeerSettings:
    """Settings of the peers besides their swept knob (one place, so reports can print them).

    taylor_warmup_steps: TaylorSeer `disable_cache_before_step`: full steps before predicting starts
        (diffusers default 3; it needs them to estimate the derivative).
    taylor_order: TaylorSeer `max_order` (diffusers default 1; higher orders extrapolate further and
        amplify noise).
    taylor_factors_dtype: dtype of TaylorSeer's stored factors. diffusers defaults to bfloat16; float32
        keeps the float32 toy models' numerics, so the comparison measures the method, not rounding.
    mag_max_skip_steps: MagCache `max_skip_steps` K (diffusers default 3). 12 lets the threshold reach
        about 7x over 50 steps; with K = 3 MagCache cannot pass 4x (K + 1 steps per computed step).
    mag_retention_ratio: MagCache `retention_ratio`: the first fraction of steps is never skipped
        (diffusers default 0.2, which caps MagCache near 4x over 50 steps; 0.06 keeps 3 of 50 steps,
        like TaylorSeer's warm-up).
    pab_timestep_range: the timestep window (in [0, 1000]) in which PyramidAttentionBroadcast may skip
        attention. The default covers every step (the knob alone sets the speed; PAB computes at its first
        call anyway); diffusers' default is (100, 800).
    faster_timestep_range: the same for FasterCache. It must exclude the first step's timestep (1000 for
        the flow-matching schedulers here): in its guidance-distilled mode diffusers 0.42's FasterCache skips
        its very first call inside the window and then fails on an empty cache. diffusers' default is
        (-1, 681).
    faster_attention_weight: FasterCache's weight of the extrapolation `t + w (t - t_prev)` (diffusers'
        default 0.5).
    """

    taylor_warmup_steps: int = 3
    taylor_order: int = 1
    taylor_factors_dtype: str = "float32"
    mag_max_skip_steps: int = 12
    mag_retention_ratio: float = 0.06
    pab_timestep_range: tuple[float, float] = (-1.0, 1001.0)
    faster_timestep_range: tuple[float, float] = (-1.0, 999.0)
    faster_attention_weight: float = 0.5

    def __post_init__(self):
        if type(self.taylor_warmup_steps) is not int or self.taylor_warmup_steps < 1:
            raise ValueError(f"taylor_warmup_steps must be an integer >= 1, got {self.taylor_warmup_steps!r}")
        if type(self.taylor_order) is not int or not 1 <= self.taylor_order <= 4:
            raise ValueError(f"taylor_order must be an integer in [1, 4], got {self.taylor_order!r}")
        if self.taylor_factors_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"taylor_factors_dtype must be float32, bfloat16 or float16, got {self.taylor_factors_dtype!r}")
        if type(self.mag_max_skip_steps) is not int or self.mag_max_skip_steps < 1:
            raise ValueError(f"mag_max_skip_steps must be an integer >= 1, got {self.mag_max_skip_steps!r}")
        if not 0.0 <= self.mag_retention_ratio < 1.0:
            raise ValueError(f"mag_retention_ratio must be in [0, 1), got {self.mag_retention_ratio!r}")
        for name in ("pab_timestep_range", "faster_timestep_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {getattr(self, name)!r}")
        if not 0.0 <= self.faster_attention_weight <= 2.0:
            raise ValueError(f"faster_attention_weight must be in [0, 2], got {self.faster_attention_weight!r}")


@dataclass(frozen=True)
class MethodSetup:
    """What the methods need to know about one (pipeline, step count) besides the pipeline itself.

    family: model family (`wan`, `hunyuan_video`, `flux`).
    steps: denoising steps T of full compute (the reference every method is compared with).
    branches: `cache_context` names the pipeline calls at every step: ("cond", "uncond") when it runs
        classifier-free guidance as separate calls (Wan), ("cond",) for guidance-distilled models.
    adapters: interval N -> the LearniBridge adapter set calibrated for `Schedule.periodic(steps, N)`: a reference
        (directory or URI; needed for generations through the engine) or an `AdapterSet` (direct calls only);
        None: LearniBridge (calibrated) is not applicable.
    mag_ratios: MagCache's per-step magnitude ratios for this model and step count, from its calibration
        mode on the calibration prompts (`calibrate_mag_ratios`); None: MagCache is not applicable.
    settings: the peers' fixed settings.
    """

    family: str
    steps: int
    branches: tuple[str, ...] = ("cond",)
    adapters: Callable[[int], AdapterSet | str] | None = None
    mag_ratios: tuple[float, ...] | None = None
    settings: PeerSettings = field(default_factory=PeerSettings)

    def __post_init__(self):
        if self.family not in families():
            raise ValueError(f"family must be one of {families()}, got {self.family!r}")
        if type(self.steps) is not int or self.steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {self.steps!r}")


@dataclass(frozen=True)
class Method:
    """One acceleration method. `knobs` is the default sweep over 50 steps, `quick_knobs` a two-point one
    for smoke runs over few steps; `apply` returns a JSON-able record of the configuration."""

    name: str
    label: str
    knob: str
    knobs: tuple[float, ...]
    quick_knobs: tuple[float, ...]
    description: str
    apply_fn: Callable[[Any, float, MethodSetup], dict]
    remove_fn: Callable[[Any], None]
    applicable_fn: Callable[[MethodSetup], str | None] = lambda setup: None
    steps_fn: Callable[[float, MethodSetup], int] | None = None
    request_fn: Callable[[float, MethodSetup], dict] | None = None

    def not_applicable(self, setup: MethodSetup) -> str | None:
        """None if the method applies to this setup, else the reason it does not."""
        return self.applicable_fn(setup)

    def steps(self, knob: float, setup: MethodSetup) -> int:
        """Denoising steps the pipeline runs under this method and knob."""
        return self.steps_fn(knob, setup) if self.steps_fn is not None else setup.steps

    def request(self, knob: float, setup: MethodSetup) -> dict:
        """`GenerationRequest` fields of a generation under this method and knob (empty for hook-only caches)."""
        fields = self.request_fn(knob, setup) if self.request_fn is not None else {}
        if self.steps_fn is not None:
            fields["num_inference_steps"] = self.steps(knob, setup)
        return fields

    def apply(self, pipe, knob: float, setup: MethodSetup) -> dict:
        """Attach the method to `pipe` (anything with a `.transformer`); returns a JSON-able record of it."""
        reason = self.not_applicable(setup)
        if reason is not None:
            raise ValueError(f"{self.name} does not apply to {setup.family}: {reason}")
        record = self.apply_fn(pipe, knob, setup)
        record["hooked_modules"] = hooked_modules(pipe.transformer)
        return record

    def remove(self, pipe) -> None:
        self.remove_fn(pipe)


def hooked_modules(transformer: torch.nn.Module) -> dict[str, int]:
    """How many modules carry each (non-lbdist) diffusers hook: evidence that a cache attached somewhere."""
    counts: dict[str, int] = {}
    for _, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in getattr(registry, "_hook_order", ()):
            if not name.startswith(_OURS):
                counts[name] = counts.get(name, 0) + 1
    return counts


# --- LearniBridge --------------------------------------------------------------------------------------
def _interval(knob) -> int:
    n = int(round(float(knob)))
    if n < 2 or n != float(knob):
        raise ValueError(f"interval must be an integer >= 2, got {knob!r}")
    return n


def _apply_bridge(calibrated: bool):
    def apply(pipe, knob, setup: MethodSetup) -> dict:
        n = _interval(knob)
        schedule = Schedule.periodic(setup.steps, n)
        ref = setup.adapters(n) if calibrated else None
        adapters = AdapterSet.load(ref) if isinstance(ref, (str, os.PathLike)) else ref
        key = None if ref is None or isinstance(ref, AdapterSet) else os.fspath(ref)
        apply_bridge(pipe, config=BridgeConfig(schedule, adapters=adapters, adapter_id=key, branches=setup.branches))
        record = {"schedule": schedule.description, "full_steps": len(schedule.full_steps),
                  "bridged_steps": len(schedule.bridged_steps)}
        if adapters is not None:
            record["adapters"] = len(adapters.weights)
            record["lora_rank"] = adapters.lora.rank
        return record

    return apply


def _bridge_request(calibrated: bool):
    def request(knob, setup: MethodSetup) -> dict:
        n = _interval(knob)
        fields = {"schedule": f"periodic:{n}"}
        if calibrated:
            ref = setup.adapters(n)
            if not isinstance(ref, (str, os.PathLike)):
                raise ValueError("a GenerationRequest names its adapter set by reference: MethodSetup.adapters must "
                                 "return a directory or URI for generations through the engine, got "
                                 f"{type(ref).__name__}")
            fields["adapters"] = os.fspath(ref)
        return fields

    return request


def _remove_bridge(pipe) -> None:
    """Back to full compute; the hooks stay installed (an `Engine` over the pipeline keeps using them)."""
    if get_bridge(pipe) is not None:
        apply_bridge(pipe, config=None)


# --- diffusers caches ----------------------------------------------------------------------------------
def _remove_cache(pipe) -> None:
    if pipe.transformer.is_cache_enabled:
        pipe.transformer.disable_cache()


def _apply_taylorseer(lite: bool):
    def apply(pipe, knob, setup: MethodSetup) -> dict:
        from diffusers import TaylorSeerCacheConfig

        s = setup.settings
        config = TaylorSeerCacheConfig(
            cache_interval=_positive_int(knob, "cache_interval"), disable_cache_before_step=s.taylor_warmup_steps,
            max_order=s.taylor_order, taylor_factors_dtype=getattr(torch, s.taylor_factors_dtype),
            cache_identifiers=None if lite else list(taylorseer_modules(setup.family)), use_lite_mode=lite)
        pipe.transformer.enable_cache(config)
        return {"cache_interval": config.cache_interval, "disable_cache_before_step": s.taylor_warmup_steps,
                "max_order": s.taylor_order, "factors_dtype": s.taylor_factors_dtype,
                "cache_identifiers": ["^proj_out$ (lite)"] if lite else list(taylorseer_modules(setup.family)),
                "skip_identifiers": ["^[^.]*block[^.]*\\.[^.]+$ (lite)"] if lite else []}

    return apply


def _positive_int(knob, name: str) -> int:
    n = int(round(float(knob)))
    if n < 1 or n != float(knob):
        raise ValueError(f"{name} must be an integer >= 1, got {knob!r}")
    return n


def _threshold(knob) -> float:
    t = float(knob)
    if not t > 0:
        raise ValueError(f"threshold must be > 0, got {knob!r}")
    return t


def _apply_fbc(pipe, knob, setup: MethodSetup) -> dict:
    from diffusers import FirstBlockCacheConfig

    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=_threshold(knob)))
    return {"threshold": float(knob), "head_block": "first block of the first block list"}


def _mag_applicable(setup: MethodSetup) -> str | None:
    if setup.mag_ratios is None:
        return "no magnitude ratios calibrated for this model (run calibrate_mag_ratios on the calibration prompts)"
    if len(setup.mag_ratios) != setup.steps:
        return f"magnitude ratios were calibrated for {len(setup.mag_ratios)} steps, not {setup.steps}"
    return None


def _apply_mag(pipe, knob, setup: MethodSetup) -> dict:
    from diffusers import MagCacheConfig

    s = setup.settings
    pipe.transformer.enable_cache(MagCacheConfig(
        threshold=_threshold(knob), max_skip_steps=s.mag_max_skip_steps, retention_ratio=s.mag_retention_ratio,
        num_inference_steps=setup.steps, mag_ratios=torch.tensor(setup.mag_ratios)))
    return {"threshold": float(knob), "max_skip_steps": s.mag_max_skip_steps,
            "retention_ratio": s.mag_retention_ratio, "mag_ratios": "calibrated (calibration prompts)"}


def _separate_branches(setup: MethodSetup) -> str | None:
    if len(setup.branches) > 1:
        return (f"the pipeline runs the guidance branches {setup.branches} as separate transformer calls, but this "
                "cache keeps one state per attention module (not per cache_context), so the uncond call would reuse "
                "the cond call's attention output")
    return None


def _apply_pab(pipe, knob, setup: MethodSetup) -> dict:
    from diffusers import PyramidAttentionBroadcastConfig

    rng = tuple(setup.settings.pab_timestep_range)
    ids = attention_modules(setup.family)
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=_positive_int(knob, "block_skip_range"),
        spatial_attention_timestep_skip_range=rng, spatial_attention_block_identifiers=ids,
        current_timestep_callback=lambda: pipe.current_timestep))
    return {"spatial_attention_block_skip_range": int(knob), "timestep_skip_range": list(rng),
            "spatial_attention_block_identifiers": list(ids)}


def _apply_faster(pipe, knob, setup: MethodSetup) -> dict:
    from diffusers import FasterCacheConfig

    s = setup.settings
    rng = tuple(s.faster_timestep_range)
    ids = attention_modules(setup.family)
    pipe.transformer.enable_cache(FasterCacheConfig(
        spatial_attention_block_skip_range=_positive_int(knob, "block_skip_range"),
        spatial_attention_timestep_skip_range=rng, spatial_attention_block_identifiers=ids,
        attention_weight_callback=lambda _: s.faster_attention_weight, is_guidance_distilled=True,
        current_timestep_callback=lambda: pipe.current_timestep))
    return {"spatial_attention_block_skip_range": int(knob), "timestep_skip_range": list(rng),
            "spatial_attention_block_identifiers": list(ids), "is_guidance_distilled": True,
            "attention_weight": s.faster_attention_weight}


# --- fewer steps ---------------------------------------------------------------------------------------
def _fewer_steps(knob, setup: MethodSetup) -> int:
    n = _positive_int(knob, "steps")
    if n >= setup.steps:
        raise ValueError(f"fewer_steps knob must be below the full step count {setup.steps}, got {knob!r}")
    return n


def _no_op(pipe, *args) -> dict:
    return {}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("learnibridge", "LearniBridge", "interval", (3, 4, 6, 8, 12, 17, 25, 50), (2, 4),
           "final block on the cached input with a calibrated per-step LoRA; full step every N",
           _apply_bridge(True), _remove_bridge,
           lambda s: None if s.adapters is not None else "no calibrated adapter sets were given",
           request_fn=_bridge_request(True)),
    Method("bridge_uncal", "bridge (uncalibrated)", "interval", (3, 4, 6, 8, 12, 17, 25, 50), (2, 4),
           "final block on the cached input, no adapters; full step every N", _apply_bridge(False), _remove_bridge,
           request_fn=_bridge_request(False)),
    Method("taylorseer", "TaylorSeerCache", "interval", (2, 3, 4, 6, 8, 12, 16), (2, 4),
           "attention+FFN modules Taylor-predicted (order 1) between refreshes every N steps",
           _apply_taylorseer(False), _remove_cache),
    Method("taylorseer_lite", "TaylorSeerCache lite", "interval", (2, 3, 4, 6, 8, 12, 16), (2, 4),
           "blocks skipped, output projection Taylor-predicted, refresh every N steps",
           _apply_taylorseer(True), _remove_cache),
    Method("fbcache", "FirstBlockCache", "threshold", (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.2),
           (0.5, 1.0),
           "blocks after the first skipped while its residual changes less than the threshold",
           _apply_fbc, _remove_cache),
    Method("magcache", "MagCache", "threshold", (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0), (0.1, 1.0),
           "all blocks skipped while the accumulated magnitude-ratio error is under the threshold",
           _apply_mag, _remove_cache, _mag_applicable),
    Method("fastercache", "FasterCache", "interval", (2, 3, 4, 6, 12), (2, 4),
           "self-attention extrapolated from the last two computed outputs, computed every N calls",
           _apply_faster, _remove_cache, _separate_branches),
    Method("pab", "PyramidAttentionBroadcast", "interval", (2, 3, 4, 6, 12), (2, 4),
           "self-attention output reused, computed every N calls", _apply_pab, _remove_cache, _separate_branches),
    Method("fewer_steps", "fewer steps", "steps", (25, 17, 12, 10, 8, 7), (4, 2),
           "the scheduler run with fewer steps", _no_op, _no_op, steps_fn=_fewer_steps),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def calibrate_mag_ratios(run: Callable[[str, int], Any], pipe, prompts, seeds, steps: int) -> tuple[float, ...]:
    """MagCache's magnitude ratios from diffusers' own calibration mode (`MagCacheConfig(calibrate=True)`).

    `run(prompt, seed)` generates once with `pipe` at `steps` steps. diffusers prints each branch's ratios at
    the end of a generation; they are averaged over prompts and guidance branches. Use calibration prompts,
    never the prompts you evaluate on.
    """
    from diffusers import MagCacheConfig

    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"need one seed per prompt (>= 1 prompt), got {len(prompts)} prompts, {len(seeds)} seeds")
    _remove_cache(pipe)
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            for prompt, seed in zip(prompts, seeds):
                run(prompt, seed)
    finally:
        _remove_cache(pipe)
    rows = [ast.literal_eval(line.strip()) for line in printed.getvalue().splitlines()
            if line.strip().startswith("[") and not line.strip().startswith("[MagCache]")]
    rows = [r for r in rows if len(r) == steps]
    if not rows:
        raise RuntimeError(f"MagCache calibration printed no ratios for {steps} steps; output was: "
                           f"{printed.getvalue()[:500]!r}")
    return tuple(float(v) for v in np.mean(np.asarray(rows, dtype=float), axis=0))
