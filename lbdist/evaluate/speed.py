"""LearniBridge against diffusers' caches on real-size random-weight transformers, in one run on one card (what
`tools/bench_speed.py` sweeps).

A *plan* lists the runs of one model in priority order as `(method, knob, kind)`:
- kind "loop": a real T-step denoising loop (`timing.denoise`) under the method (`peers.METHODS`), with wall time,
  peak memory, attention / FFN / block evaluations relative to full compute (`CostMeter`), computed steps;
- kind "pipeline": one whole-pipeline generation with LearniBridge at interval `knob` through
  `lbdist.generation.Engine` (small random text encoders, the size's VAE): text-encoding, transformer and decode
  times give the fixed share and the end-to-end ratio `(T t_full + fixed) / total`, capped by
  `(T t_full + fixed) / fixed`;
- kind "estimate": an every-N-th-step attention cache timed over its first 3 steps, the loop extrapolated.
Full compute is never looped: `T x t_full` from the median full step. Each model has a time budget; a run whose
estimated cost exceeds what is left is reported as skipped, and TaylorSeer (attention + FFN) is skipped where its
factors would not fit in GPU memory.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import tempfile
import time
from dataclasses import replace
from types import SimpleNamespace

import torch

from ..bridge import Schedule, remove_bridge
from ..models import get_spec
from . import realsize
from .bridge_speed import random_adapters, step_costs
from .cost import CostMeter
from .peers import METHODS, MethodSetup, PeerSettings, taylorseer_modules
from .timing import denoise, free_cuda_cache, peak_gb, reset_peak, sync

KINDS = ("loop", "pipeline", "estimate")


def computed_steps(method: str, n: float, steps: int, kind: str, settings: PeerSettings) -> int:
    """Steps a run computes in full (for its cost estimate before running it)."""
    if kind == "estimate":
        return 3
    if method in ("learnibridge", "magcache"):
        return math.ceil(steps / n)
    if method.startswith("taylorseer"):
        w = settings.taylor_warmup_steps
        return sum(1 for s in range(steps) if s < w or (s - w - 1) % int(n) == 0)
    if method == "fbcache":
        return 1
    return steps  # attention-only caches still run every block's FFN: budget them as full steps


def method_setup(method: str, n: float, steps: int, rank: int, model, dtype) -> tuple[float, MethodSetup]:
    """(method knob, setup) of one loop: the knob and settings that give the interval-N pattern. MagCache: unit
    ratios, `max_skip_steps` N-1, no retention (every N-th step computed); FirstBlockCache: infinite threshold."""
    settings = PeerSettings(taylor_factors_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    schedules = lambda interval: random_adapters(model, Schedule.periodic(steps, interval), rank)  # noqa: E731
    setup = MethodSetup(get_spec(model).family, steps, ("cond",), adapters=schedules, mag_ratios=(1.0,) * steps,
                        settings=settings)
    if method == "magcache":
        return 1.0, replace(setup, settings=replace(settings, mag_max_skip_steps=int(n) - 1, mag_retention_ratio=0.0))
    if method == "fbcache":
        return 1e9, setup
    return n, setup


def taylor_factor_bytes(model, forward) -> int:
    """Bytes TaylorSeer (order 1) would hold: two factors per output of every module it caches."""
    patterns, total = taylorseer_modules(get_spec(model).family), [0]

    def count(module, args, output):
        outs = output if isinstance(output, tuple) else (output,)
        total[0] += sum(o.nbytes for o in outs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(count) for name, m in model.named_modules()
               if any(re.fullmatch(p, name) for p in patterns)]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return 2 * total[0]


def _jsonable(record: dict) -> dict:
    return json.loads(json.dumps(record, default=str))


def run_loop(ctx: SimpleNamespace, method: str, n: float) -> dict:
    """One real loop under `method` at interval-like knob `n`; wall time, peak memory, evaluations vs full."""
    knob, setup = method_setup(method, n, ctx.steps, ctx.rank, ctx.model, ctx.dtype)
    m = METHODS[method]
    record = m.apply(ctx.shim, knob, setup)
    reset_peak(ctx.device)
    try:
        with CostMeter(ctx.model, flops=ctx.quick) as meter, torch.no_grad():
            run = denoise(ctx.model, ctx.latents, ctx.kwargs_at, ctx.steps)
    finally:
        m.remove(ctx.shim)
        if method in ("learnibridge", "bridge_uncal"):
            remove_bridge(ctx.model)
    full = {k: v * ctx.steps for k, v in ctx.per_step.items()}
    t_full = ctx.costs["t_full_ms"]
    return {"method": method, "knob": n, "kind": "loop", "config": _jsonable(record), "loop_s": round(run.seconds, 3),
            "speedup": round(ctx.steps * t_full / 1e3 / run.seconds, 3),
            "computed_steps": sum(1 for t in run.step_ms if t > 0.5 * t_full) if run.step_ms else None,
            "evaluations": {k: round(meter.counts[k] / full[k], 4) for k in ("attention", "ffn", "blocks")},
            "flops_ratio": round(meter.counts["flops"] / full["flops"], 4) if ctx.quick else None,
            "peak_memory_gb": peak_gb(ctx.device), "method_knob": knob}


def estimate_from_steps(ctx: SimpleNamespace, method: str, n: int) -> dict:
    """Loop time of an every-N-th-step attention cache from measured step costs (the loop's first 3 steps)."""
    _, setup = method_setup(method, n, ctx.steps, ctx.rank, ctx.model, ctx.dtype)
    m = METHODS[method]
    record = m.apply(ctx.shim, n, setup)
    sig, x, times = realsize.sigmas(ctx.steps), ctx.latents, []
    try:
        with torch.no_grad():
            for i in range(3):
                sync(ctx.device)
                t = time.perf_counter()
                with ctx.model.cache_context("cond", step_index=i, num_inference_steps=ctx.steps):
                    v = ctx.model(**ctx.kwargs_at(x, sig[i]))[0]
                x = x + (sig[i + 1] - sig[i]) * v
                sync(ctx.device)
                times.append((time.perf_counter() - t) * 1e3)
    finally:
        m.remove(ctx.shim)
    t_full, t_skip = ctx.costs["t_full_ms"], statistics.median(times[1:])
    computed = math.ceil(ctx.steps / n)
    seconds = (computed * t_full + (ctx.steps - computed) * t_skip) / 1e3
    return {"method": method, "knob": n, "kind": "estimate from step costs", "config": _jsonable(record),
            "step_ms": [round(t, 2) for t in times], "t_skip_ms": round(t_skip, 2), "computed_steps": computed,
            "loop_s": round(seconds, 3), "speedup": round(ctx.steps * t_full / 1e3 / seconds, 3)}


def pipeline_call(ctx: SimpleNamespace, n: int) -> dict:
    """One whole-pipeline generation with LearniBridge at interval n through `Engine`: stages and fixed share."""
    from ..generation import Engine, GenerationRequest

    spec, size = realsize.lookup(ctx.name)
    loaded = realsize.loaded_pipeline(ctx.name, ctx.model, ctx.steps, ctx.device, ctx.dtype)
    guidance = 1.0 if len(spec.branches) > 1 else size.guidance  # one transformer call per step, as the loops
    with tempfile.TemporaryDirectory(prefix="lbdist-speed-") as tmp:
        random_adapters(ctx.model, Schedule.periodic(ctx.steps, n), ctx.rank).save(tmp)
        reset_peak(ctx.device)
        try:
            # one branch runs (guidance 1 for true-CFG families): the set covers `cond`, the only one called
            request = GenerationRequest(realsize.full_prompt(size.text_tokens), schedule=str(n), adapters=tmp,
                                        guidance_scale=guidance, allow_uncovered=len(spec.branches) > 1)
            result = Engine(loaded).run(request)
        finally:
            remove_bridge(loaded.pipe)
    t = result.timings
    fixed = t["total"] - t["transformer"]
    full_e2e = ctx.steps * ctx.costs["t_full_ms"] / 1e3 + fixed
    small = ctx.name.startswith(realsize.QUICK_PREFIX)
    out = {"method": "pipeline", "knob": n, "kind": "whole pipeline (LearniBridge)", "total_s": round(t["total"], 3),
           "transformer_s": round(t["transformer"], 3), "text_encoding_s": round(t["text_encoders"], 3),
           "vae_decode_s": round(t["decode"], 3), "fixed_s": round(fixed, 3),
           "fixed_share_of_bridged_pipeline": round(fixed / t["total"], 4),
           "full_pipeline_s_from_median": round(full_e2e, 3), "end_to_end_speedup": round(full_e2e / t["total"], 3),
           "loop_speedup": round(ctx.steps * ctx.costs["t_full_ms"] / 1e3 / t["transformer"], 3),
           "end_to_end_cap": round(full_e2e / fixed, 2), "bridge_stats": dict(result.calls),
           "vae": f"{type(loaded.pipe.vae).__name__} ({'small' if small else 'released size'}, random)",
           "vae_tiling": bool(size.vae_tiling), "peak_memory_gb": peak_gb(ctx.device)}
    del loaded, result
    free_cuda_cache()
    return out


def prepare(name: str, steps: int, repeats: int, device, rank: int, dtype, quick: bool) -> SimpleNamespace:
    """Build one model and measure what every run of it needs: step costs, per-step evaluations, factor bytes."""
    model = realsize.build_transformer(name, device, dtype)
    latents, make_kwargs = realsize.step_inputs(name, model, device, dtype)
    shim = SimpleNamespace(transformer=model, current_timestep=1000.0)

    def kwargs_at(x, sigma):  # PAB / FasterCache read the current timestep through the shim, as from a pipeline
        shim.current_timestep = float(sigma) * 1000.0
        return make_kwargs(x, sigma)

    one = lambda: model(**make_kwargs(latents, 0.5))  # noqa: E731
    with torch.no_grad(), CostMeter(model, flops=quick) as meter:  # one counted full step, also a warm-up
        factor_bytes = taylor_factor_bytes(model, one)
    costs = step_costs(model, one, repeats, warmup=1)
    free = None
    if torch.device(device).type == "cuda":  # free on the card plus what the caching allocator holds unused
        free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return SimpleNamespace(name=name, model=model, latents=latents, kwargs_at=kwargs_at, shim=shim, steps=steps,
                           rank=rank, dtype=dtype, device=device, quick=quick, costs=costs,
                           per_step=dict(meter.counts), factor_bytes=factor_bytes, free=free)


def _skip_reason(ctx, method: str, n: float, kind: str, left: float) -> str | None:
    t_full, t_final = ctx.costs["t_full_ms"], ctx.costs["t_final_ms"]
    est = (computed_steps(method, n, ctx.steps, kind, PeerSettings()) * t_full + ctx.steps * t_final) / 1e3
    if est > left:
        return f"estimated {est:.0f} s, {left:.0f} s of this model's budget left"
    if method == "taylorseer" and ctx.free is not None and ctx.factor_bytes > 0.9 * ctx.free:
        return f"Taylor factors need {ctx.factor_bytes / 2**30:.1f} GB, {ctx.free / 2**30:.1f} GB free"
    return None


def run_one(ctx: SimpleNamespace, method: str, n: float, kind: str) -> dict:
    """One run of a plan; a failure (out of memory) is recorded, not raised, unless the run is a quick one."""
    if kind not in KINDS:
        raise ValueError(f"run kind must be one of {KINDS}, got {kind!r}")
    try:
        if kind == "pipeline":
            return pipeline_call(ctx, int(n))
        if kind == "estimate":
            return estimate_from_steps(ctx, method, int(n))
        return run_loop(ctx, method, n)
    except Exception as e:  # one failing run must not lose the others
        if ctx.quick:
            raise
        free_cuda_cache()
        return {"method": method, "knob": n, "kind": "failed", "reason": f"{type(e).__name__}: {e}"[:500]}


def measure_model(name: str, plan, steps: int, repeats: int, device, rank: int, dtype, quick: bool,
                  budget_s: float, log=print) -> dict:
    """Every run of `plan` (`(method, knob, kind)` in priority order) on one real size, within `budget_s`."""
    started = time.perf_counter()
    spec, size = realsize.lookup(name)
    ctx = prepare(name, steps, repeats, device, rank, dtype, quick)
    c = ctx.costs
    result = {"model": name, "family": spec.family, "shape": size.label(), "steps": steps, "t_full_ms": c["t_full_ms"],
              "t_full_all_ms": c["t_full_all_ms"], "t_final_ms": c["t_final_ms"],
              "full_loop_s_from_median": round(steps * c["t_full_ms"] / 1e3, 3),
              "taylorseer_factor_gb": round(ctx.factor_bytes / 2**30, 2),
              "free_memory_gb_before_loops": round(ctx.free / 2**30, 2) if ctx.free else None, "budget_s": budget_s,
              "runs": []}
    for method, n, kind in plan:
        reason = _skip_reason(ctx, method, n, kind, budget_s - (time.perf_counter() - started))
        run = ({"method": method, "knob": n, "kind": "skipped", "reason": reason} if reason
               else run_one(ctx, method, n, kind))
        result["runs"].append(run)
        log(f"  {name} {method} {n} {kind}: {run.get('speedup', run.get('end_to_end_speedup'))}x "
            f"({time.perf_counter() - started:.0f} s into the model)")
    result["seconds"] = round(time.perf_counter() - started, 1)
    del ctx
    free_cuda_cache()
    return result
