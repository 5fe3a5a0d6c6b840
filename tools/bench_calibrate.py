"""Calibration cost on real-size transformers (random weights): recording pairs and training one bridge.

    python tools/bench_calibrate.py --models wan-1.3b hunyuan-video --out tools/results/bench_calibrate.json

For each model a real diffusers pipeline is built around the real-size transformer (`realsize.bench_pipeline`)
and the recorder samples `--prompts` calibration prompts with full compute, N=`--interval` over `--steps`
steps. To fit the device budget the sampling of each prompt is interrupted after `--record-steps` steps
(the pipeline's own interrupt flag): the time per prompt for all steps is extrapolated linearly from the
measured per-step recording time (the step cost is constant), and every extrapolated figure is labelled so.
Peak GPU memory, host memory and bytes on disk are measured. Then one bridge is trained from the recorded
pairs (first prompt trains, the last is held out): seconds per optimiser step with one pair, the
reference recipe's time (5000 epochs x 5 pairs, extrapolated from that), and a real early-stopped run
(capped at `--early-stop-cap` seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bridge import environment  # noqa: E402
from realsize import CONFIGS, QUICK, SHAPES, bench_pipeline, call_kwargs, latent_tokens  # noqa: E402

from lbdist.bridge import Schedule  # noqa: E402
from lbdist.calibrate import RecordConfig, TrainConfig, load_pairs, record_pairs, train_bridge  # noqa: E402
from lbdist.models import get_spec  # noqa: E402

PROMPTS = ["a red circle moves left", "a blue square moves up", "a green triangle moves right",
           "a yellow circle moves down", "a red square moves right"]


def host_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stop_after(k: int):
    def callback(pipe, i, t, tensors):
        if i + 1 >= k:
            pipe._interrupt = True
        return {}
    return callback


def bench_model(name: str, args, device, dtype, workdir: Path) -> dict:
    shape = SHAPES[name]
    pipe = bench_pipeline(name, device=device, dtype=dtype)
    spec = get_spec(pipe.transformer)
    calls = dict(call_kwargs(name, shape))
    schedule = Schedule.periodic(args.steps, args.interval)
    branches = 2 if calls.get("guidance_scale", 1) > 1 and spec.family == "wan" else 1
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    # full-compute cost of one pipeline step, without recording (same interrupted call)
    sync(); t = time.perf_counter()
    pipe(prompt=PROMPTS[0], num_inference_steps=args.steps, output_type="latent",
         callback_on_step_end=stop_after(args.plain_steps), **calls)
    sync(); plain_step = (time.perf_counter() - t) / args.plain_steps

    pairs_dir = workdir / f"{name}-pairs"
    shutil.rmtree(pairs_dir, ignore_errors=True)
    record = RecordConfig(prompts=tuple(PROMPTS[:args.prompts]),
                          call_kwargs={**calls, "callback_on_step_end": stop_after(args.record_steps)})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(); t = time.perf_counter()
    record_pairs(pipe, schedule, record, pairs_dir, progress=False)
    sync(); record_s = time.perf_counter() - t
    disk = sum(f.stat().st_size for f in pairs_dir.rglob("*") if f.is_file())
    per_step = record_s / (args.prompts * args.record_steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    result = {"model": name, "family": spec.family, "shape": shape.label(), "latent_tokens": latent_tokens(name, shape),
              "branches": branches, "steps": args.steps, "interval": args.interval,
              "plain_full_step_s": round(plain_step, 3),
              "record": {"prompts_recorded": args.prompts, "steps_recorded_per_prompt": args.record_steps,
                         "seconds": round(record_s, 2), "seconds_per_step": round(per_step, 3),
                         "overhead_vs_plain_step": round(per_step / plain_step, 3),
                         "peak_gpu_gb": round(peak, 2) if peak else None, "host_peak_rss_gb": round(host_rss_gb(), 2),
                         "bytes_on_disk": disk, "bytes_per_recorded_step": int(disk / (args.prompts * args.record_steps)),
                         "extrapolated_5_prompts_all_steps_s": round(per_step * 5 * args.steps, 1),
                         "extrapolated_5_prompts_bytes": int(disk / (args.prompts * args.record_steps) * 5 * args.steps)}}

    # training one bridge (step 1, branch cond): prompt 0 trains, the last prompt is held out
    final = spec.final_block(pipe.transformer)
    pairs = load_pairs(pairs_dir, 1, "cond", device)
    train, held = pairs[:1], pairs[-1:]
    base = TrainConfig(rank=args.rank, alpha=2.0 * args.rank).resolved(spec.family)
    timing = TrainConfig(**{**base.__dict__, "max_epochs": args.timing_epochs, "eval_every": 10**6})
    warm = TrainConfig(**{**timing.__dict__, "max_epochs": 3})
    train_bridge(final, spec, train, [], warm, spec.lora_targets)  # CUDA warm-up: kernel choice, allocation
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, info = train_bridge(final, spec, train, [], timing, spec.lora_targets)
    step_s = info["seconds"] / args.timing_epochs
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    early = TrainConfig(**{**base.__dict__, "max_seconds": args.early_stop_cap})
    _, einfo = train_bridge(final, spec, train, held, early, spec.lora_targets)
    reference_epochs = {"wan": 5000, "hunyuan_video": 5000, "flux": 800}[spec.family]
    result["train"] = {
        "lora_rank": args.rank, "lr": base.lr, "seconds_per_optimizer_step_one_pair": round(step_s, 4),
        "peak_gpu_gb": round(train_peak, 2) if train_peak else None,
        "reference_recipe": f"{reference_epochs} epochs x 5 pairs",
        "reference_recipe_s_extrapolated": round(step_s * 5 * reference_epochs, 1),
        "bridges_in_schedule": len(schedule.bridged_steps) * branches,
        "reference_all_bridges_gpu_hours_extrapolated": round(step_s * 5 * reference_epochs
                                                              * len(schedule.bridged_steps) * branches / 3600, 2),
        "early_stopped_run": einfo, "early_stop_cap_s": args.early_stop_cap,
    }
    del pipe, final, pairs, train, held
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["wan-1.3b", "hunyuan-video"], choices=sorted(CONFIGS))
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--record-steps", type=int, default=10, help="steps recorded per prompt before interrupting")
    ap.add_argument("--plain-steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--timing-epochs", type=int, default=20)
    ap.add_argument("--early-stop-cap", type=float, default=60.0)
    ap.add_argument("--workdir", default=None, help="where pairs are written (default: a temp dir)")
    ap.add_argument("--out", default="tools/results/bench_calibrate.json")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test with tiny configs")
    args = ap.parse_args(argv)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() and not args.quick else ("cpu", torch.float32)
    if args.quick:
        args.models = [m for m in QUICK if CONFIGS[m][0] != "flux"]
        args.steps, args.record_steps, args.plain_steps, args.rank = 10, 4, 2, 4
        args.timing_epochs, args.early_stop_cap = 3, 2.0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lbdist-bench-cal-"))
    report = {"benchmark": "bench_calibrate", **environment(), "models": []}
    for name in args.models:
        report["models"].append(bench_model(name, args, device, dtype, workdir))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        shutil.rmtree(workdir / f"{name}-pairs", ignore_errors=True)
    print(f"\n{report['card']} | commit {report['commit'][:10]}")
    for m in report["models"]:
        r, t = m["record"], m["train"]
        print(f"{m['model']:14} plain step {m['plain_full_step_s']:.3f} s | record {r['seconds_per_step']:.3f} s/step "
              f"(x{r['overhead_vs_plain_step']:.2f}), peak {r['peak_gpu_gb']} GB, {r['bytes_per_recorded_step'] / 1e6:.0f} MB/step"
              f" | 5 prompts x {m['steps']} steps ~ {r['extrapolated_5_prompts_all_steps_s']:.0f} s (extrapolated)")
        print(f"{'':14} optimiser step {t['seconds_per_optimizer_step_one_pair']:.4f} s/pair | reference recipe "
              f"{t['reference_recipe_s_extrapolated']:.0f} s/bridge | early-stopped run {t['early_stopped_run']['seconds']:.1f} s "
              f"({t['early_stopped_run']['epochs_run']} epochs, loss {t['early_stopped_run']['loss_uncalibrated']:.3e} -> "
              f"{t['early_stopped_run']['loss_best']:.3e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
