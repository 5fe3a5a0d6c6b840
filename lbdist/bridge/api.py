"""Public entry points of the bridge: `enable_bridge`, `disable_bridge`, `reset_bridge`, `bridge_stats`.

    pipe = WanPipeline.from_pretrained(...)
    enable_bridge(pipe, Schedule.periodic(num_steps=50, interval=5), adapters="adapters/wan-n5")
    video = pipe(prompt="...", num_inference_steps=50).frames[0]   # now bridged
    disable_bridge(pipe)                                            # back to the original model
"""
from __future__ import annotations

import os

import torch
from diffusers.hooks import HookRegistry

from ..models import get_spec
from .adapter_set import AdapterSet
from .hooks import FINAL_HOOK, STEP_HOOK, BridgeRuntime, FinalBlockHook, StepHook
from .resident import ResidentAdapters
from .schedule import Schedule

_ATTR = "_lbdist_bridge"


def _transformer(pipe_or_transformer) -> torch.nn.Module:
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return pipe_or_transformer
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if transformer is None:
        raise ValueError(f"{type(pipe_or_transformer).__name__} has no `transformer`; pass a diffusers pipeline "
                         "(WanPipeline, HunyuanVideoPipeline, FluxPipeline) or its transformer")
    if getattr(pipe_or_transformer, "transformer_2", None) is not None:
        raise ValueError("two-expert pipelines (Wan2.2 with transformer_2) are not supported by the bridge yet")
    return transformer


def enable_bridge(pipe, schedule: Schedule, adapters: AdapterSet | str | os.PathLike | None = None) -> BridgeRuntime:
    """Bridge the pipeline's transformer with `schedule`; `pipe(prompt=...)` is then bridged.

    Args:
        pipe: a diffusers pipeline (or a bare transformer) of a supported family.
        schedule: which steps run in full (`Schedule.periodic(num_steps, N)` or `Schedule.explicit`).
        adapters: an `AdapterSet`, a directory or Hub repo id holding one, or None for the uncalibrated
            bridge. The set must have been calibrated for this model and this schedule.
    Returns the runtime (its `stats` count full, bridged and calibrated transformer calls).
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be an lbdist Schedule (Schedule.periodic / Schedule.explicit), "
                         f"got {type(schedule).__name__}")
    transformer = _transformer(pipe)
    spec = get_spec(transformer)
    if getattr(transformer, _ATTR, None) is not None:
        disable_bridge(transformer)
    blocks = spec.blocks(transformer)
    if len(blocks) < 2:
        raise ValueError(f"{type(transformer).__name__} has {len(blocks)} block(s); bridging needs at least 2")
    final = blocks[-1]
    resident = None
    if adapters is not None:
        if not isinstance(adapters, AdapterSet):
            adapters = AdapterSet.load(adapters)
        adapters.check_fits(transformer, spec.family, schedule)
        resident = ResidentAdapters(final, adapters, spec.lora_targets)
    scheduler = getattr(pipe, "scheduler", None)
    steps_of = None
    if scheduler is not None:
        def steps_of():
            timesteps = getattr(scheduler, "timesteps", None)
            return None if timesteps is None else len(timesteps)
    runtime = BridgeRuntime(spec, schedule, resident, steps_of=steps_of)

    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(StepHook(runtime), STEP_HOOK)
    HookRegistry.check_if_exists_or_initialize(final).register_hook(FinalBlockHook(runtime, final), FINAL_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    setattr(transformer, _ATTR, runtime)
    return runtime


def disable_bridge(pipe) -> None:
    """Remove every bridge hook and adapter: the transformer computes exactly as before `enable_bridge`."""
    transformer = _transformer(pipe)
    runtime = getattr(transformer, _ATTR, None)
    if runtime is None:
        return
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in (STEP_HOOK, FINAL_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    if runtime.adapters is not None:
        runtime.adapters.remove()
    delattr(transformer, _ATTR)


def reset_bridge(pipe) -> None:
    """Drop cached states and step counters (pipelines do this after each call; use after an interrupted run)."""
    runtime = get_bridge(pipe)
    if runtime is not None:
        runtime.states.reset()
        runtime.current = None


def get_bridge(pipe) -> BridgeRuntime | None:
    return getattr(_transformer(pipe), _ATTR, None)


def bridge_stats(pipe) -> dict:
    """Counts of full, bridged and calibrated transformer calls since the bridge was enabled."""
    runtime = get_bridge(pipe)
    return dict(runtime.stats) if runtime is not None else {}
