"""Bridge speed on real-size transformers with random weights, against full compute, on one GPU.

    python tools/bench_bridge.py --models wan-14b hunyuan-video flux-dev --intervals 5 6 7 --steps 50 \
        --out tools/results/bench_bridge.json

For each model: `t_full` (median of >= 5 full forwards), `t_final` (median forward through the embeddings,
the final block and the head only: the model's own forward with its block lists cut to the final block),
then for each interval N a real T-step denoising loop with the bridge enabled and a random rank-32 adapter
set resident (every bridged step runs its LoRA, as in production). The full-compute loop is T * t_full.
Ceiling for F full steps of T: T * t_full / (F * t_full + (T - F) * t_final). Cache memory is the bytes the
bridge holds per guidance branch over the bytes of one final-block input. Prints a table, writes JSON.
One guidance branch ("cond") is used, as a guidance-distilled model or a CFG-batched call would.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realsize import CONFIGS, QUICK, SHAPES, build, latent_tokens, sigmas, step_inputs  # noqa: E402

from lbdist.bridge import LoraSettings, Schedule, disable_bridge, enable_bridge, random_adapter_set  # noqa: E402
from lbdist.models import get_spec  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


@contextmanager
def final_block_only(model):
    """The model's block lists cut to the final block: what a bridged step ideally costs."""
    spec = get_spec(model)
    saved = {n: model._modules[n] for n in spec.block_lists}
    for n in spec.block_lists[:-1]:
        model._modules[n] = torch.nn.ModuleList()
    model._modules[spec.block_lists[-1]] = torch.nn.ModuleList([saved[spec.block_lists[-1]][-1]])
    try:
        yield
    finally:
        model._modules.update(saved)


def denoise(model, latents, make_kwargs, steps: int):
    """A T-step Euler flow-matching loop, one `cache_context` per step as diffusers pipelines do."""
    sig = sigmas(steps)
    x = latents
    events = []
    use_events = torch.cuda.is_available()
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        if use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        with model.cache_context("cond", step_index=i, num_inference_steps=steps):
            v = model(**make_kwargs(x, sig[i]))[0]
        x = x + (sig[i + 1] - sig[i]) * v
        if use_events:
            end.record()
            events.append((start, end))
    sync()
    seconds = time.perf_counter() - t0
    step_ms = [s.elapsed_time(e) for s, e in events] if use_events else []
    return x, seconds, step_ms


def bench_model(name: str, intervals, steps: int, repeats: int, device: str, rank: int, dtype) -> dict:
    family, config = CONFIGS[name]
    shape = SHAPES[name]
    model = build(name, device=device, dtype=dtype)
    latents, make_kwargs = step_inputs(name, shape, device=device, dtype=dtype)
    spec = get_spec(model)
    final = spec.final_block(model)
    one_input = {}

    def measure_input(module, args, kwargs):
        from lbdist.models import BlockArgs
        ba = BlockArgs(module)
        one_input["bytes"] = sum(ba.get(n, args, kwargs).nbytes for n in spec.stream_names)

    handle = final.register_forward_pre_hook(measure_input, with_kwargs=True)
    with torch.no_grad():
        t_full, full_all = median_ms(lambda: model(**make_kwargs(latents, 0.5)), repeats)
        handle.remove()
        with final_block_only(model):
            t_final, final_all = median_ms(lambda: model(**make_kwargs(latents, 0.5)), repeats)
        result = {"model": name, "family": family, "shape": shape.label(), "text_tokens": shape.text_tokens,
                  "latent_tokens": latent_tokens(name, shape), "blocks": len(spec.blocks(model)),
                  "params_billion": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
                  "t_full_ms": round(t_full, 2), "t_full_all_ms": [round(t, 2) for t in full_all],
                  "t_final_ms": round(t_final, 3), "t_final_all_ms": [round(t, 3) for t in final_all],
                  "one_final_input_bytes": one_input["bytes"], "runs": []}
        for n in intervals:
            schedule = Schedule.periodic(steps, n)
            adapters = random_adapter_set(model, schedule, branches=("cond",),
                                          lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets))
            runtime = enable_bridge(model, schedule, adapters=adapters)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            _, seconds, step_ms = denoise(model, latents, make_kwargs, steps)
            cache = runtime.states._state_cache["cond"].cache
            cache_bytes = sum(t.nbytes for t in cache.values())
            full_n = len(schedule.full_steps)
            bridged_ms = [step_ms[s] for s in schedule.bridged_steps] if step_ms else []
            full_loop = steps * t_full / 1e3
            ceiling = steps * t_full / (full_n * t_full + (steps - full_n) * t_final)
            speedup = full_loop / seconds
            result["runs"].append({
                "interval": n, "full_steps": full_n, "bridged_steps": steps - full_n,
                "calibrated_calls": runtime.stats["calibrated"],
                "bridged_loop_s": round(seconds, 3), "full_loop_s_from_median": round(full_loop, 3),
                "speedup": round(speedup, 3), "ceiling": round(ceiling, 3), "of_ceiling": round(speedup / ceiling, 4),
                "bridged_step_ms_median": round(statistics.median(bridged_ms), 3) if bridged_ms else None,
                "cache_bytes_per_branch": cache_bytes, "cache_over_one_input": round(cache_bytes / one_input["bytes"], 4),
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
                "adapter_set_bytes": sum(t.nbytes for w in adapters.weights.values() for t in w.values()),
            })
            disable_bridge(model)
            del adapters
    del model, latents, make_kwargs, final
    gc.collect()  # hook registries hold reference cycles; free the model before the next one is built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def environment() -> dict:
    import diffusers
    import peft

    commit = os.environ.get("LBDIST_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"card": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "commit": commit or "unknown", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["wan-14b", "hunyuan-video", "flux-dev"], choices=sorted(CONFIGS))
    ap.add_argument("--intervals", nargs="+", type=int, default=[5, 6, 7])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="measured forwards for each median (>= 5 for reports)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="tools/results/bench_bridge.json")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny configs, 10 steps, fp32")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16
    if args.quick:
        args.models, args.device, args.steps, args.intervals, args.repeats, args.rank = QUICK, "cpu", 10, [3], 2, 4
        dtype = torch.float32
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but no CUDA device is visible; this benchmark is for the GPU")
    report = {"benchmark": "bench_bridge", **environment(), "steps": args.steps, "rank": args.rank, "models": []}
    for name in args.models:
        report["models"].append(bench_model(name, args.intervals, args.steps, args.repeats, args.device, args.rank, dtype))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))  # after each model: partial results survive
    print(f"\n{report['card']} | commit {report['commit'][:10]} | {args.steps} steps, LoRA r={args.rank}")
    print(f"{'model':14} {'N':>2} {'t_full ms':>10} {'t_final ms':>10} {'loop s':>8} {'speedup':>8} {'ceiling':>8} "
          f"{'of ceil':>8} {'cache/in':>8}")
    for m in report["models"]:
        for r in m["runs"]:
            print(f"{m['model']:14} {r['interval']:>2} {m['t_full_ms']:>10.2f} {m['t_final_ms']:>10.3f} "
                  f"{r['bridged_loop_s']:>8.2f} {r['speedup']:>8.3f} {r['ceiling']:>8.3f} {r['of_ceiling']:>8.3f} "
                  f"{r['cache_over_one_input']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
