r"""Bridge speed on real-size transformers with random weights, against full compute and the ceiling, one GPU.

    python tools/bench_bridge.py --models wan-14b hunyuan-video flux-dev --intervals 5 6 7 --steps 50 \
        --out tools/results/bench_bridge.json
    python tools/bench_bridge.py --quick --out /tmp/bench_bridge_quick.json      # CPU smoke test (tiny sizes)

Per model (`lbdist.evaluate.bridge_speed.measure_model`): median full step, median final-block-only step, then
per interval N a real T-step loop with the bridge and a random rank-r adapter set resident; speedup, ceiling,
fraction of the ceiling (judged against tools/targets.json), cache bytes per branch. One guidance branch.
Writes JSON after each model (card, commit, date), prints a table last.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lbdist.evaluate import bridge_speed, realsize
from lbdist.evaluate.timing import environment, write_json

TARGETS = json.loads((Path(__file__).with_name("targets.json")).read_text())["bench_bridge"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["wan-14b", "hunyuan-video", "flux-dev"], choices=realsize.names())
    ap.add_argument("--intervals", nargs="+", type=int, default=[5, 6, 7])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="measured forwards for each median (>= 5 for reports)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="tools/results/bench_bridge.json")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, 10 steps, fp32")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16
    if args.quick:
        args.models, args.device, args.steps, args.intervals, args.repeats, args.rank = (
            list(realsize.quick_names()), "cpu", 10, [3], 2, 4)
        dtype = torch.float32
        torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but no CUDA device is visible; this benchmark is for the GPU")
    report = {"benchmark": "bench_bridge", **environment(), "steps": args.steps, "rank": args.rank,
              "targets": TARGETS, "models": []}
    for name in args.models:
        model = bridge_speed.measure_model(name, args.intervals, args.steps, args.repeats, args.device, args.rank,
                                           dtype)
        for run in model["runs"]:
            run["of_ceiling_met"] = run["of_ceiling"] >= TARGETS["of_ceiling"]
        report["models"].append(model)
        write_json(args.out, report)  # after each model: partial results survive
    print(f"\n{report['card']} | commit {report['commit'][:10]} | {args.steps} steps, LoRA r={args.rank}")
    print(f"{'model':14} {'N':>2} {'t_full ms':>10} {'t_final ms':>10} {'loop s':>8} {'speedup':>8} {'ceiling':>8} "
          f"{'of ceil':>8} {'cache/in':>8}  of ceiling >= {TARGETS['of_ceiling']}")
    for m in report["models"]:
        for r in m["runs"]:
            print(f"{m['model']:14} {r['interval']:>2} {m['t_full_ms']:>10.2f} {m['t_final_ms']:>10.3f} "
                  f"{r['bridged_loop_s']:>8.2f} {r['speedup']:>8.3f} {r['ceiling']:>8.3f} {r['of_ceiling']:>8.3f} "
                  f"{r['cache_over_one_input']:>8.3f}  {'met' if r['of_ceiling_met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
