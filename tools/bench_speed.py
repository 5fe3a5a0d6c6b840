"""Speed of LearniBridge against full compute and diffusers' caches, real-size random-weight models, one GPU.

    python tools/bench_speed.py --out tools/results/bench_speed_h100.json
    python tools/bench_speed.py --quick --out /tmp/bench_speed_quick.json        # CPU smoke test (tiny sizes)

Models: Wan2.1-14B 480x832x81, HunyuanVideo 480x832x65, FLUX.1-dev 1024x1024, bf16, 50 steps, one guidance
branch. Per model, in one run on one card (`lbdist.evaluate.speed.measure_model`, which documents each kind):
full compute as 50 x the median full step; LearniBridge at N = 5, 6 as real loops and at N = 7 as one
whole-pipeline generation through `Engine` (fixed share, end-to-end ratio); diffusers' caches as real loops at
knobs comparable to those intervals (TaylorSeerCache full and lite, MagCache with unit ratios and max_skip N-1,
FirstBlockCache at an infinite threshold, PAB / FasterCache) or, for attention-only caches on the video models,
estimated from measured step costs. Each model has a time budget (`BUDGET_S`, about 9 minutes for the three on
an H100): a run whose estimated cost exceeds what is left is reported as skipped. JSON after each model (card,
commit, date); the table last.
"""
from __future__ import annotations

import argparse
import math

import torch

from lbdist.evaluate import realsize, speed
from lbdist.evaluate.timing import environment, write_json

MODELS = ["wan-14b", "hunyuan-video", "flux-dev"]
# Time budget per model (seconds, model build included): the three fit one 9-minute device call on an H100.
BUDGET_S = {"wan-14b": 235, "hunyuan-video": 175, "flux-dev": 80, "wan-1.3b": 120}
# What to run per model, in priority order: (method, interval N or knob, kind).
_VIDEO = [("learnibridge", 5, "loop"), ("learnibridge", 6, "loop"), ("learnibridge", 7, "pipeline"),
          ("pab", 5, "estimate"), ("fastercache", 5, "estimate"), ("taylorseer_lite", 5, "loop"),
          ("magcache", 5, "loop"), ("fbcache", math.inf, "loop"), ("taylorseer", 5, "loop")]
_FLUX = [*[("learnibridge", n, "loop") for n in (5, 6, 7)], ("learnibridge", 7, "pipeline"),
         *[(m, 5, "loop") for m in ("taylorseer", "taylorseer_lite", "magcache")], ("fbcache", math.inf, "loop"),
         *[(m, 5, k) for k in ("loop", "estimate") for m in ("pab", "fastercache")],
         *[(m, n, "loop") for m in ("taylorseer", "taylorseer_lite", "magcache", "pab", "fastercache") for n in (6, 7)]]
PLANS = {"wan-14b": _VIDEO, "hunyuan-video": _VIDEO, "flux-dev": _FLUX,
         "wan-1.3b": _VIDEO + [("pab", 5, "loop"), ("fastercache", 5, "loop")]}
QUICK_PLAN = [("learnibridge", 3, "loop"), ("learnibridge", 4, "pipeline"), ("taylorseer", 3, "loop"),
              ("taylorseer_lite", 3, "loop"), ("magcache", 3, "loop"), ("fbcache", math.inf, "loop"),
              ("pab", 3, "loop"), ("fastercache", 3, "loop"), ("pab", 3, "estimate")]


def print_table(report: dict) -> None:
    print(f"\n{report['card']} | commit {report['commit'][:10]} | {report['steps']} steps, one guidance branch")
    print(f"{'model':14} {'method':16} {'N':>4} {'kind':26} {'loop s':>8} {'speedup':>8} {'peak GB':>8}  "
          "evaluations a/f/b")
    for m in report["models"]:
        print(f"{m['model']:14} {'full compute':16} {'':>4} {'50 x median step':26} "
              f"{m['full_loop_s_from_median']:>8.2f} {1.0:>8.3f}")
        for r in m["runs"]:
            if r["kind"] in ("skipped", "failed"):
                print(f"{m['model']:14} {r['method']:16} {r['knob']:>4g} {r['kind']}: {r['reason']}")
                continue
            ev = r.get("evaluations")
            ev = "/".join(f"{ev[k]:.2f}" for k in ("attention", "ffn", "blocks")) if ev else ""
            print(f"{m['model']:14} {r['method']:16} {r['knob']:>4g} {r['kind'][:26]:26} "
                  f"{r.get('loop_s', r.get('transformer_s')):>8.2f} {r.get('speedup', r.get('loop_speedup')):>8.3f} "
                  f"{r.get('peak_memory_gb') or 0:>8.2f}  {ev}")
            if r["method"] == "pipeline":
                print(f"{'':14} {'':16} {'':>4} text {r['text_encoding_s']:.2f} s, "
                      f"VAE decode {r['vae_decode_s']:.2f} s, fixed {r['fixed_s']:.2f} s "
                      f"({100 * r['fixed_share_of_bridged_pipeline']:.1f}% of the bridged pipeline); "
                      f"end-to-end {r['end_to_end_speedup']:.2f}x (cap {r['end_to_end_cap']:.1f}x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=sorted(PLANS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="measured forwards for each median (>= 5 for reports)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="scale every model's time budget (BUDGET_S)")
    ap.add_argument("--out", default="tools/results/bench_speed.json")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, 8 steps, fp32")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16
    if args.quick:
        args.models, args.device, args.steps, args.repeats, args.rank, dtype = (
            list(realsize.quick_names()), "cpu", 8, 2, 4, torch.float32)
        torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but no CUDA device is visible; this benchmark is for the GPU")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    report = {"benchmark": "bench_speed", **environment(), "steps": args.steps, "rank": args.rank,
              "dtype": str(dtype).replace("torch.", ""), "models": []}
    for name in args.models:
        budget = 1e9 if args.quick else BUDGET_S.get(name, 120) * args.budget_scale
        plan = QUICK_PLAN if args.quick else PLANS[name]
        report["models"].append(speed.measure_model(name, plan, args.steps, args.repeats, args.device, args.rank, dtype,
                                                    args.quick, budget, log=lambda line: print(line, flush=True)))
        write_json(args.out, report)  # after each model: partial results survive
    print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
