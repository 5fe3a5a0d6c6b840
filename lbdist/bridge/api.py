"""Public entry points of the bridge: `apply_bridge` / `remove_bridge`, plus `reset_bridge` and `bridge_stats`.

    pipe = WanPipeline.from_pretrained(...)
    apply_bridge(pipe, config=BridgeConfig(Schedule.periodic(50, 5), adapters="adapters/wan-n5"))
    video = pipe(prompt="...", num_inference_steps=50).frames[0]   # now bridged
    remove_bridge(pipe)                                             # back to the original model

Applying again reconfigures the hooks in place (another schedule or adapter set); adapter sets stay resident
in the transformer's `AdapterCache` (LRU), so switching back to a set seen before injects nothing.
`enable_bridge(pipe, schedule, adapters)` / `disable_bridge(pipe)` are the positional aliases of earlier releases.
"""
from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry

from ..models import get_spec
from .adapter_set import AdapterSet
from .config import BridgeConfig
from .inputs import resolve as resolve_input
from .hooks import FINAL_HOOK, STEP_HOOK, BridgeRuntime, FinalBlockHook, StepHook
from .resident import AdapterCache, CacheLimits
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


def _install(pipe, transformer: torch.nn.Module, limits: CacheLimits) -> BridgeRuntime:
    spec = get_spec(transformer)
    blocks = spec.blocks(transformer)
    if len(blocks) < 2:
        raise ValueError(f"{type(transformer).__name__} has {len(blocks)} block(s); bridging needs at least 2")
    scheduler = getattr(pipe, "scheduler", None)

    def steps_of():
        timesteps = getattr(scheduler, "timesteps", None)
        return None if timesteps is None else len(timesteps)
    cache = AdapterCache(blocks[-1], spec.lora_targets, limits)
    runtime = BridgeRuntime(spec, None, None, steps_of=steps_of if scheduler is not None else None,
                            adapter_cache=cache)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(StepHook(runtime), STEP_HOOK)
    HookRegistry.check_if_exists_or_initialize(blocks[-1]).register_hook(FinalBlockHook(runtime, blocks[-1]), FINAL_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    setattr(transformer, _ATTR, runtime)
    return runtime


def _load_set(config: BridgeConfig) -> AdapterSet:
    return config.adapters if isinstance(config.adapters, AdapterSet) else AdapterSet.load(config.adapters)


def apply_bridge(pipe_or_transformer, *, config: BridgeConfig | None, cache_limits: CacheLimits | None = None
                 ) -> BridgeRuntime:
    """Bridge the pipeline's transformer as `config` says; `pipe(prompt=...)` is then bridged.

    Args:
        pipe_or_transformer: a diffusers pipeline (or a bare transformer) of a registered family.
        config: schedule and adapter set (`BridgeConfig`); None keeps the hooks installed but computes every step
            in full (exactly the original model), which is what a full-compute request between bridged ones uses.
        cache_limits: bounds of the resident adapter sets (first call only; default `CacheLimits()`).
    Returns the runtime (`stats` counts full, bridged and calibrated transformer calls; `trace` which step of
    which branch ran how; `adapter_cache` the resident sets).
    """
    if config is not None and not isinstance(config, BridgeConfig):
        raise ValueError(f"config must be a BridgeConfig or None, got {type(config).__name__}")
    transformer = _transformer(pipe_or_transformer)
    runtime = getattr(transformer, _ATTR, None)
    if runtime is None:
        runtime = _install(pipe_or_transformer, transformer, cache_limits or CacheLimits())
    if config is None:
        runtime.configure(None, None)
        return runtime
    bridge_input = resolve_input(None, config.bridge_input)  # the uncalibrated bridge's; a set's own below
    resident = None
    if config.adapters is not None:
        key = config.key
        if key in runtime.adapter_cache:
            resident = runtime.adapter_cache.get(key, None)
        else:
            adapters = _load_set(config)
            adapters.check_fits(transformer, runtime.spec.family, config.schedule)
            check_coverage(adapters, config, config.branches or runtime.spec.branches)
            resident = runtime.adapter_cache.get(key, lambda: adapters)
        if resident.adapters.schedule != config.schedule:
            resident.adapters.check_fits(transformer, runtime.spec.family, config.schedule)
        bridge_input = resolve_input(resident.adapters, config.bridge_input)  # the set's own (its manifest)
    runtime.configure(config.schedule, resident, bridge_input)
    return runtime


def check_coverage(adapters: AdapterSet, config: BridgeConfig, branches: tuple[str, ...]) -> list[tuple[int, str]]:
    """Bridges of the schedule x branches without an adapter; refused (ValueError listing them) unless
    `config.allow_uncovered` (they then run uncalibrated, and a generation's `steps` says which)."""
    return adapters.check_coverage(config.schedule, branches, allow_uncovered=config.allow_uncovered)


def remove_bridge(pipe_or_transformer) -> None:
    """Remove every bridge hook and adapter: the transformer computes exactly as before `apply_bridge`."""
    transformer = _transformer(pipe_or_transformer)
    runtime = getattr(transformer, _ATTR, None)
    if runtime is None:
        return
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in (STEP_HOOK, FINAL_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    runtime.adapter_cache.clear()
    delattr(transformer, _ATTR)


def enable_bridge(pipe, schedule: Schedule, adapters=None) -> BridgeRuntime:
    """`apply_bridge(pipe, config=BridgeConfig(schedule, adapters))` (the positional form of earlier releases)."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be an lbdist Schedule (Schedule.periodic / Schedule.explicit), "
                         f"got {type(schedule).__name__}")
    return apply_bridge(pipe, config=BridgeConfig(schedule, adapters))


def disable_bridge(pipe) -> None:
    """Alias of `remove_bridge`."""
    remove_bridge(pipe)


def reset_bridge(pipe) -> None:
    """Drop cached states and step counters (pipelines do this after each call; use after an interrupted run)."""
    runtime = get_bridge(pipe)
    if runtime is not None:
        runtime.states.reset()
        runtime.current = None


def get_bridge(pipe) -> BridgeRuntime | None:
    return getattr(_transformer(pipe), _ATTR, None)


def bridge_stats(pipe) -> dict:
    """Counts of full, bridged and calibrated transformer calls since the bridge was applied."""
    runtime = get_bridge(pipe)
    return dict(runtime.stats) if runtime is not None else {}
