"""Sequence parallelism (xfuser Ulysses, in lbdist Ray worker groups) times the bridge, on real-size transformers.

    # on a 4-GPU machine (about 5 minutes); NCCL_NVLS_ENABLE=0 etc. are forwarded to every Ray worker
    python tools/bench_sp.py --degrees 1 2 4 --out $OUT/bench_sp.json
    python tools/bench_sp.py --quick          # CPU smoke test: tiny configs, 2 gloo ranks, fp32

Models: Wan2.1-14B config at 480x832x81 (32,760 tokens, CFG: two transformer calls per step) and the
HunyuanVideo config at 480x832x65 (26,520 tokens, guidance-distilled: one call), random bf16 weights built on
each GPU (`tools/realsize.py`). For each degree d a `WorkerGroup` of d Ray actors (one per GPU, NCCL) is
started, and every rank, through `group.run`, builds the model, times full steps (median of >= 5 after 2
warm-ups; CUDA-synchronised wall time inside the rank, so Ray adds nothing), then bridged steps (through the
lbdist hooks with a real `cache_context` per step and a random rank-32 adapter resident for every bridge), and,
at the largest degree, a real 50-step Euler loop with the bridge (N=6). At degree 1 the plain diffusers model
is the baseline ("one GPU, full compute"); the xfuser wrapper at degree 1 is timed too, to separate what the
wrapper itself changes (HunyuanVideo: it drops the text padding mask) from what the split buys.

Derived: SP speedup = t_full(1 GPU) / t_full(d); bridge speedup at 1 GPU = T*t_full / (F*t_full + (T-F)*t_bridged)
for F full steps of T; the loop's speedup = T*calls*t_full(1 GPU) / measured loop seconds at degree d.
Targets: SP-4 >= 3.5x on full steps; bridge x SP-4 >= 0.9 x (bridge speedup x SP speedup).
Writes JSON (card, commit from LBDIST_COMMIT or git, date, every number) after each stage; prints a table last.
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
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(1, str(ROOT))
from realsize import CONFIGS, SHAPES, build, latent_tokens, sigmas, step_inputs  # noqa: E402

from lbdist.bridge import LoraSettings, Schedule, disable_bridge, enable_bridge, random_adapter_set  # noqa: E402
from lbdist.bridge import reset_bridge  # noqa: E402
from lbdist.models import get_spec  # noqa: E402

BRANCHES = {"wan": ("cond", "uncond"), "hunyuan_video": ("cond",), "flux": ("cond",)}
GUIDANCE = 5.0


# --- inside each rank ------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(worker, name: str, mode: str, dtype):
    family, config = CONFIGS[name]
    torch.manual_seed(0)
    if mode == "diffusers":
        return build(name, device=worker.device, dtype=dtype)
    from lbdist.parallel import xdit

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(worker.device):
            model = xdit.build_wrapped(family, dict(config))
    finally:
        torch.set_default_dtype(previous)
    xdit.init_runtime(model, ulysses=worker.ulysses, ring=worker.ring)
    return model.eval().requires_grad_(False)


def _timed(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _bridged_times(model, make_kwargs, latents, repeats: int, rank: int, device) -> list[float]:
    """Step 0 full, then `repeats` bridged steps with their adapters, each through a real cache_context."""
    spec = get_spec(model)
    schedule = Schedule.explicit(repeats + 2, [0])
    adapters = random_adapter_set(model, schedule, branches=("cond",), lora=LoraSettings(rank, 2.0 * rank,
                                                                                       spec.lora_targets))
    enable_bridge(model, schedule, adapters=adapters)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        with model.cache_context("cond", step_index=i, num_inference_steps=repeats + 2):
            model(**make_kwargs(latents, 0.5))
        _sync(device)
        if i >= 2:  # step 1 is the bridged warm-up
            times.append(time.perf_counter() - start)
    reset_bridge(model)
    disable_bridge(model)
    return times


def _loop(model, name, make_kwargs, latents, steps: int, interval: int, rank: int, device) -> dict:
    """A real T-step Euler flow-matching loop with the bridge (CFG for Wan: cond and uncond calls per step)."""
    family = CONFIGS[name][0]
    branches = BRANCHES[family]
    spec = get_spec(model)
    schedule = Schedule.periodic(steps, interval)
    adapters = random_adapter_set(model, schedule, branches=branches,
                                  lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets))
    runtime = enable_bridge(model, schedule, adapters=adapters)
    negative = None
    if len(branches) > 1:
        text = make_kwargs(latents, 0.5)["encoder_hidden_states"]
        g = torch.Generator().manual_seed(1)
        negative = torch.randn(text.shape, generator=g).to(text.device, text.dtype)
    sig = sigmas(steps)
    x = latents
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        kwargs = make_kwargs(x, sig[i])
        with model.cache_context("cond", step_index=i, num_inference_steps=steps):
            v = model(**kwargs)[0]
        if negative is not None:
            with model.cache_context("uncond", step_index=i, num_inference_steps=steps):
                v_u = model(**{**kwargs, "encoder_hidden_states": negative})[0]
            v = v_u + GUIDANCE * (v - v_u)
        x = x + (sig[i + 1] - sig[i]) * v
    _sync(device)
    seconds = time.perf_counter() - start
    stats = dict(runtime.stats)
    reset_bridge(model)
    disable_bridge(model)
    return {"seconds": seconds, "steps": steps, "interval": interval, "full_steps": len(schedule.full_steps),
            "calls_per_step": len(branches), "stats": stats, "finite": bool(torch.isfinite(x).all())}


def measure(worker, name: str, mode: str, opts: dict) -> dict:
    """Everything one rank measures for one model (called on every rank at once through `group.run`)."""
    device = worker.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = _build(worker, name, mode, dtype)
    latents, make_kwargs = step_inputs(name, SHAPES[name], device=device, dtype=dtype)
    out = {"rank": worker.rank, "mode": mode, "degree": worker.sp_degree}
    with torch.no_grad():
        out["full_s"] = _timed(lambda: model(**make_kwargs(latents, 0.5)), device, opts["repeats"], opts["warmup"])
        sample = model(**make_kwargs(latents, 0.5))[0]  # collective: every rank calls it
        if worker.rank == 0:
            out["sample"] = sample.float().cpu()
        out["bridged_s"] = _bridged_times(model, make_kwargs, latents, opts["repeats"], opts["lora_rank"], device)
        if opts.get("loop"):
            out["loop"] = _loop(model, name, make_kwargs, latents, opts["steps"], opts["interval"],
                                opts["lora_rank"], device)
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def comm_probe(worker, megabytes: int, repeats: int = 5) -> dict:
    """All-to-all bandwidth of this group (the collective Ulysses runs four times per attention layer)."""
    import torch.distributed as dist

    n = dist.get_world_size()
    numel = megabytes * 2**20 // 2 // n * n
    x = torch.randn(numel, device=worker.device).to(torch.bfloat16 if worker.device.type == "cuda" else torch.float32)
    y = torch.empty_like(x)
    times = _timed(lambda: dist.all_to_all_single(y, x), worker.device, repeats, 2)
    seconds = statistics.median(times)
    return {"megabytes": megabytes, "seconds": seconds, "algbw_gb_s": x.numel() * x.element_size() / seconds / 1e9}


# --- driver ----------------------------------------------------------------------------------------------------
def environment(quick: bool) -> dict:
    import diffusers
    import ray

    commit = os.environ.get("LBDIST_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    try:
        from importlib.metadata import version
        xfuser_version = version("xfuser")
    except Exception:
        xfuser_version = "unknown"
    return {"benchmark": "bench_sp", "quick": quick, "commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host_cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "ray": ray.__version__, "xfuser": xfuser_version}


def summarise(per_rank: list[dict]) -> dict:
    r0 = per_rank[0]
    row = {"full_s_median": statistics.median(r0["full_s"]), "full_s_all": r0["full_s"],
           "full_s_median_max_over_ranks": max(statistics.median(r["full_s"]) for r in per_rank),
           "bridged_s_median": statistics.median(r0["bridged_s"]), "bridged_s_all": r0["bridged_s"]}
    if "peak_gb" in r0:
        row["peak_gb_max_over_ranks"] = max(r["peak_gb"] for r in per_rank)
    if "loop" in r0:
        row["loop"] = r0["loop"]
    return row


def derive(result: dict, degrees: list[int], steps: int, interval: int) -> None:
    runs, base = result["runs"], result["runs"].get("1/diffusers")
    if base is None:
        return
    t1, b1 = base["full_s_median"], base["bridged_s_median"]
    full_n = len(Schedule.periodic(steps, interval).full_steps)
    bridge_speedup = steps * t1 / (full_n * t1 + (steps - full_n) * b1)
    derived = {"bridge_speedup_1gpu_computed": bridge_speedup, "sp_speedup": {}, "rel_l2_vs_1gpu": {}}
    for key, run in runs.items():
        derived["sp_speedup"][key] = t1 / run["full_s_median"]
        if "rel_l2_vs_1gpu" in run:
            derived["rel_l2_vs_1gpu"][key] = run["rel_l2_vs_1gpu"]
    top = f"{max(degrees)}/xfuser"
    if top in runs and "loop" in runs[top]:
        loop = runs[top]["loop"]
        one_gpu = steps * loop["calls_per_step"] * t1
        sp = derived["sp_speedup"][top]
        measured = one_gpu / loop["seconds"]
        derived.update({"one_gpu_full_loop_s_computed": one_gpu, "loop_s_measured": loop["seconds"],
                        "loop_speedup_vs_1gpu_full": measured, "expected_product": bridge_speedup * sp,
                        "of_product": measured / (bridge_speedup * sp)})
        derived["targets"] = {"sp_full_step_speedup>=3.5": sp >= 3.5,
                              "bridge_x_sp>=0.9*product": measured >= 0.9 * bridge_speedup * sp,
                              "loop_speedup>=15": measured >= 15.0}
    result["derived"] = derived


def run_degree(group, degree: int, names, opts, report, args) -> None:
    for name in names:
        modes = (["diffusers"] + (["xfuser"] if args.sp1_wrapper else [])) if degree == 1 else ["xfuser"]
        for mode in modes:
            loop = degree == max(args.degrees) and mode == "xfuser"
            t = time.perf_counter()
            per_rank = group.run(measure, name, mode, {**opts, "loop": loop})
            row = summarise(per_rank)
            sample = per_rank[0]["sample"]
            result = report["models"][name]
            base = result.get("_sample")
            if base is None and mode == "diffusers":
                result["_sample"] = sample
            elif base is not None:
                row["rel_l2_vs_1gpu"] = float((sample - base).norm() / base.norm().clamp_min(1e-12))
            result["runs"][f"{degree}/{mode}"] = row
            print(f"[bench_sp] {name} degree {degree} {mode}: full {row['full_s_median']:.4f} s, bridged "
                  f"{row['bridged_s_median']:.4f} s ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)


def write(report: dict, path: Path) -> None:
    clean = {**report, "models": {n: {k: v for k, v in m.items() if not k.startswith("_")}
                                  for n, m in report["models"].items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean, indent=2))
    os.replace(tmp, path)


def table(report: dict) -> str:
    lines = [f"{report.get('card', '?')} | commit {report['commit'][:10]} | {report['date']}"]
    for degree, w in report.get("workers", {}).items():
        if "all_to_all" in w:
            lines.append(f"all-to-all over {degree} ranks ({w['backend']}): {w['all_to_all']['algbw_gb_s']:.1f} GB/s "
                         f"for {w['all_to_all']['megabytes']} MB")
    lines.append(f"{'model':14} {'run':>12} {'full s':>8} {'SP x':>6} {'bridged s':>9} {'rel L2':>8}")
    for name, m in report["models"].items():
        d = m.get("derived", {})
        for key, run in m["runs"].items():
            lines.append(f"{name:14} {key:>12} {run['full_s_median']:>8.4f} {d.get('sp_speedup', {}).get(key, 0):>6.2f} "
                         f"{run['bridged_s_median']:>9.4f} {run.get('rel_l2_vs_1gpu', 0.0):>8.1e}")
        if "loop_speedup_vs_1gpu_full" in d:
            lines.append(f"{name:14} bridge@1GPU {d['bridge_speedup_1gpu_computed']:.2f}x; loop {d['loop_s_measured']:.2f} s "
                         f"vs 1 GPU full {d['one_gpu_full_loop_s_computed']:.1f} s = {d['loop_speedup_vs_1gpu_full']:.2f}x "
                         f"({d['of_product']:.2f} of product); targets {d['targets']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["wan-14b", "hunyuan-video"], choices=sorted(CONFIGS))
    ap.add_argument("--degrees", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--interval", type=int, default=6, help="bridge schedule N of the loop")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per median (>= 5 for reports)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--no-sp1-wrapper", dest="sp1_wrapper", action="store_false",
                    help="skip timing xfuser's wrapper at degree 1")
    ap.add_argument("--call-timeout", type=float, default=420.0,
                    help="seconds one model's measurement may take on a group before it is declared stuck")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_sp.json, else tools/results/)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny configs, 2 gloo ranks, fp32")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.degrees, args.steps, args.interval = ["tiny-wan", "tiny-hunyuan-video"], [1, 2], 6, 3
        args.repeats, args.warmup, args.lora_rank = 2, 1, 4
    out = Path(args.out or (Path(os.environ["OUT"]) / "bench_sp.json" if os.environ.get("OUT") else
                            ROOT / "tools" / "results" / ("bench_sp_quick.json" if args.quick else "bench_sp.json")))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from lbdist.parallel import WorkerGroup, WorkerGroupConfig

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, **({"num_cpus": 2, "num_gpus": 0} if args.quick else {}))
    gpus = 0 if args.quick else None
    report = {**environment(args.quick), "steps": args.steps, "interval": args.interval, "repeats": args.repeats,
              "lora_rank": args.lora_rank, "degrees": args.degrees,
              "models": {n: {"family": CONFIGS[n][0], "shape": SHAPES[n].label(),
                             "latent_tokens": latent_tokens(n, SHAPES[n]), "runs": {}} for n in args.models}}
    path_env = os.pathsep.join([str(TOOLS), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {"PYTHONPATH": path_env, "XDIT_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    opts = {"repeats": args.repeats, "warmup": args.warmup, "lora_rank": args.lora_rank, "steps": args.steps,
            "interval": args.interval}
    try:
        for degree in args.degrees:
            t = time.perf_counter()
            config = WorkerGroupConfig(num_workers=degree, gpus_per_worker=gpus, env_vars=env,
                                       call_timeout_s=args.call_timeout)
            group = WorkerGroup(config).start()
            try:
                info = group.info[0]
                report.setdefault("card", info.get("gpu") or report["host_cpu"])
                report.setdefault("workers", {})[str(degree)] = {
                    "backend": info["backend"], "gpus": [i.get("gpu") for i in group.info],
                    "group_start_s": time.perf_counter() - t}
                if degree > 1:
                    report["workers"][str(degree)]["all_to_all"] = group.run(comm_probe, 4 if args.quick else 256)[0]
                run_degree(group, degree, args.models, opts, report, args)
            finally:
                group.shutdown()
            for name in args.models:
                derive(report["models"][name], args.degrees, args.steps, args.interval)
            write(report, out)
    finally:
        if started_ray:
            ray.shutdown()
    print(f"[bench_sp] wrote {out}", file=sys.stderr)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
