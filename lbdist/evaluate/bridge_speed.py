"""Bridge speed on a real-size transformer: the cost of a full and of a final-block-only step, the ceiling they
give, and real bridged denoising loops with a random adapter set resident (what `tools/bench_bridge.py` sweeps).

- `t_full`: median of full forwards. `t_final`: median of the model's own forward with its block lists cut to the
  final block (`ModelSpec.only_final_block`, the view the bridge's step hook uses): embeddings, one block, head.
- Ceiling for F full steps of T: `T t_full / (F t_full + (T - F) t_final)`; a bridged loop can approach it but
  pays the adapters and the hooks.
- Cache memory: the bytes the bridge holds per guidance branch (`BridgeRuntime.cached_bytes`) over the bytes of
  one final-block input.
"""
from __future__ import annotations

import statistics
from contextlib import contextmanager

import torch

from ..bridge import AdapterSet, BridgeConfig, LoraSettings, Schedule, apply_bridge, random_adapter_set, remove_bridge
from ..models import BlockArgs, get_spec
from . import realsize
from .timing import denoise, free_cuda_cache, median_ms, peak_gb, reset_peak


@contextmanager
def final_block_only(model: torch.nn.Module):
    """Inside, `model`'s forward runs the embeddings, the final block and the head only."""
    saved = get_spec(model).only_final_block(model)
    try:
        yield
    finally:
        for name, blocks in saved.items():
            setattr(model, name, blocks)


@contextmanager
def final_input_bytes(model: torch.nn.Module):
    """Yields a dict whose "bytes" is the size of the final block's stream input in the last forward run inside."""
    spec = get_spec(model)
    final, box = spec.final_block(model), {"bytes": 0}
    args = BlockArgs(final)

    def measure(module, a, kw):
        box["bytes"] = sum(args.get(n, a, kw).nbytes for n in spec.stream_names)

    handle = final.register_forward_pre_hook(measure, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def ceiling(steps: int, full_steps: int, t_full: float, t_final: float) -> float:
    """Speedup of a loop whose bridged steps cost exactly `t_final`."""
    if not 1 <= full_steps <= steps:
        raise ValueError(f"full_steps must be in 1..{steps}, got {full_steps}")
    return steps * t_full / (full_steps * t_full + (steps - full_steps) * t_final)


def random_adapters(model: torch.nn.Module, schedule: Schedule, rank: int,
                    branches: tuple[str, ...] = ("cond",)) -> AdapterSet:
    """A random rank-`rank` adapter set (alpha 2 rank) for every bridge of `schedule`: speed only, never quality."""
    spec = get_spec(model)
    return random_adapter_set(model, schedule, branches=branches,
                              lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets))


def step_costs(model: torch.nn.Module, forward, repeats: int, warmup: int = 2) -> dict:
    """`t_full` and `t_final` (ms, medians and every measurement) of one step, and one final input's bytes."""
    with torch.no_grad():
        with final_input_bytes(model) as one_input:
            t_full, full_all = median_ms(forward, repeats, warmup)
        with final_block_only(model):
            t_final, final_all = median_ms(forward, repeats, warmup)
    return {"t_full_ms": round(t_full, 2), "t_full_all_ms": [round(t, 2) for t in full_all],
            "t_final_ms": round(t_final, 3), "t_final_all_ms": [round(t, 3) for t in final_all],
            "one_final_input_bytes": one_input["bytes"]}


def bridged_loop(model: torch.nn.Module, latents, kwargs_at, steps: int, interval: int, rank: int,
                 costs: dict) -> dict:
    """A real `steps`-step loop with the bridge at `Schedule.periodic(steps, interval)` and random adapters."""
    schedule = Schedule.periodic(steps, interval)
    adapters = random_adapters(model, schedule, rank)
    runtime = apply_bridge(model, config=BridgeConfig(schedule, adapters=adapters, branches=("cond",)))
    reset_peak(latents.device)
    try:
        with torch.no_grad():
            run = denoise(model, latents, kwargs_at, steps)
        cache = runtime.cached_bytes().get("cond", 0)
        calibrated = runtime.stats["calibrated"]
    finally:
        remove_bridge(model)
    t_full, t_final = costs["t_full_ms"], costs["t_final_ms"]
    full_n = len(schedule.full_steps)
    full_loop = steps * t_full / 1e3
    speedup, limit = full_loop / run.seconds, ceiling(steps, full_n, t_full, t_final)
    bridged_ms = [run.step_ms[s] for s in schedule.bridged_steps] if run.step_ms else []
    return {"interval": interval, "full_steps": full_n, "bridged_steps": steps - full_n, "calibrated_calls": calibrated,
            "bridged_loop_s": round(run.seconds, 3), "full_loop_s_from_median": round(full_loop, 3),
            "speedup": round(speedup, 3), "ceiling": round(limit, 3), "of_ceiling": round(speedup / limit, 4),
            "bridged_step_ms_median": round(statistics.median(bridged_ms), 3) if bridged_ms else None,
            "cache_bytes_per_branch": cache, "cache_over_one_input": round(cache / costs["one_final_input_bytes"], 4),
            "peak_memory_gb": peak_gb(latents.device),
            "adapter_set_bytes": sum(t.nbytes for w in adapters.weights.values() for t in w.values())}


def measure_model(name: str, intervals, steps: int, repeats: int, device="cuda", rank: int = 32,
                  dtype: torch.dtype = torch.bfloat16) -> dict:
    """Everything `tools/bench_bridge.py` reports for one real size: step costs, then one loop per interval."""
    spec, size = realsize.lookup(name)
    model = realsize.build_transformer(name, device, dtype)
    latents, kwargs_at = realsize.step_inputs(name, model, device, dtype)
    costs = step_costs(model, lambda: model(**kwargs_at(latents, 0.5)), repeats)
    result = {"model": name, "family": spec.family, "shape": size.label(), "text_tokens": size.text_tokens,
              "latent_tokens": realsize.latent_tokens(name), "blocks": len(spec.blocks(model)),
              "params_billion": round(sum(p.numel() for p in model.parameters()) / 1e9, 3), **costs,
              "runs": [bridged_loop(model, latents, kwargs_at, steps, n, rank, costs) for n in intervals]}
    del model, latents, kwargs_at
    free_cuda_cache()  # free the model before the next one is built
    return result
