"""Calibration cost on real-size transformers (random weights): recording pairs and training one bridge.

    python tools/bench_calibrate.py --models wan-1.3b hunyuan-video --out tools/results/bench_calibrate.json
    python tools/bench_calibrate.py --quick --out /tmp/bench_calibrate_quick.json    # CPU smoke test (tiny sizes)

Per model (`lbdist.evaluate.calibration_cost.measure_model`): a plain full-compute generation through `Engine`
(seconds per step), recording `--prompts` calibration prompts over `--record-steps` steps of interval N (time per
step, peak GPU and host memory, bytes on disk; all T steps of 5 prompts extrapolated and labelled so), then one
bridge trained from the recorded pairs: seconds per optimiser step, the family's reference recipe extrapolated, and
an early-stopped run capped at `--early-stop-cap` seconds. JSON after each model (card, commit, date), table last.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from lbdist.evaluate import calibration_cost, realsize
from lbdist.evaluate.timing import environment, write_json


def print_table(report: dict) -> None:
    print(f"\n{report['card']} | commit {report['commit'][:10]}")
    for m in report["models"]:
        r, t = m["record"], m["train"]
        e = t["early_stopped_run"]
        print(f"{m['model']:14} plain step {m['plain_full_step_s']:.3f} s | record {r['seconds_per_step']:.3f} s/step "
              f"(x{r['overhead_vs_plain_step']:.2f}), peak {r['peak_gpu_gb']} GB, "
              f"{r['bytes_per_recorded_step'] / 1e6:.0f} MB/step | 5 prompts x {m['steps']} steps ~ "
              f"{r['extrapolated_5_prompts_all_steps_s']:.0f} s (extrapolated)")
        print(f"{'':14} optimiser step {t['seconds_per_optimizer_step_one_pair']:.4f} s/pair | reference recipe "
              f"{t['reference_recipe_s_extrapolated']:.0f} s/bridge | early-stopped run {e['seconds']:.1f} s "
              f"({e['epochs_run']} epochs, loss {e['loss_uncalibrated']:.3e} -> {e['loss_best']:.3e})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["wan-1.3b", "hunyuan-video"], choices=realsize.names())
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--record-steps", type=int, default=10, help="steps recorded per prompt (the rest extrapolated)")
    ap.add_argument("--plain-steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--timing-epochs", type=int, default=20)
    ap.add_argument("--early-stop-cap", type=float, default=60.0)
    ap.add_argument("--workdir", default=None, help="where pairs are written (default: a temporary directory)")
    ap.add_argument("--out", default="tools/results/bench_calibrate.json")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test with the tiny video sizes")
    args = ap.parse_args(argv)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() and not args.quick else ("cpu", torch.float32)
    if args.quick:
        args.models = [m for m in realsize.quick_names() if realsize.lookup(m)[0].is_video]
        args.steps, args.record_steps, args.plain_steps, args.rank, args.timing_epochs, args.early_stop_cap = (
            10, 4, 2, 4, 3, 2.0)
        torch.set_num_threads(1)
    opts = calibration_cost.CostOptions(args.prompts, args.steps, args.interval, args.record_steps, args.plain_steps,
                                        args.rank, args.timing_epochs, args.early_stop_cap)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lbdist-bench-cal-"))
    report = {"benchmark": "bench_calibrate", **environment(), "models": []}
    try:
        for name in args.models:
            report["models"].append(calibration_cost.measure_model(name, opts, device, dtype, workdir))
            write_json(args.out, report)  # after each model: partial results survive
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
