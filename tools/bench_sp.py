r"""Sequence parallelism (xfuser Ulysses, in lbdist Ray worker groups) times the bridge, on real-size transformers.

    # on a 4-GPU machine (about 5 minutes); NCCL_NVLS_ENABLE=0 etc. are forwarded to every Ray worker
    python tools/bench_sp.py --degrees 1 2 4 --out $OUT/bench_sp.json
    python tools/bench_sp.py --quick          # CPU smoke test: tiny sizes, 2 gloo ranks, fp32

Models: Wan2.1-14B at 480x832x81 (CFG: two transformer calls per step) and HunyuanVideo at 480x832x65
(guidance-distilled: one call). Per degree a `WorkerGroup` measures on every rank (`lbdist.evaluate.sp_bench`):
full and bridged step medians, and at the loop degree (the largest) a whole T-step bridged loop per `--intervals`
N; derived SP speedups, bridge speedup at 1 GPU, loop speedup and its fraction of the product, judged by the
targets in tools/targets.json (`lbdist.evaluate.sp_report`). JSON (card, commit from LBDIST_COMMIT or git, date)
after each degree; <stem>.samples.pt beside it keeps a strided subset of the 1-GPU output, so a later call
(`--merge`) still reports each degree's relative L2 against one GPU. The table is printed last.

Issue 6 (8 GPUs, the 720p sizes; about 1,100 s of steps, so three device calls and a merge on the CPU). Every call:
kind nvidia-h100-x8, carry [".whl-sp"], timeout_s 600; NVLink multicast off in every process.

    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TORCH_CUDA_ARCH_LIST=9.0
    export PYTHONUNBUFFERED=1 LBDIST_COMMIT=<git rev-parse HEAD here>
    [ -d /tmp/site/ray ] || { mkdir -p /tmp/w && tar -xJf .whl-sp/bundle.tar.xz -C /tmp/w && python3 -m pip \
        install -q --no-index --no-deps --no-build-isolation --target /tmp/site /tmp/w/*; }
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
    A="--intervals 6 7 --loop-degree 8 --repeats 3 --warmup 1 --no-sp1-wrapper"
    # call 1 (~5 min): HunyuanVideo at SP 1; copy its JSON and .samples.pt into tools/results/ before call 2
    python3 tools/bench_sp.py --models hunyuan-video-720p --degrees 1 $A --out $OUT/sp720_hunyuan_sp1.json
    # call 2 (~7.5 min): HunyuanVideo at SP 8 (and its two loops), 4, 2
    python3 tools/bench_sp.py --models hunyuan-video-720p --degrees 8 4 2 $A \
        --merge tools/results/sp720_hunyuan_sp1.json --out $OUT/sp720_hunyuan.json
    # call 3 (~6 min): Wan2.1-14B at SP 1, 8 (and its two loops), 4, 2
    python3 tools/bench_sp.py --models wan-14b-720p --degrees 1 8 4 2 $A --out $OUT/sp720_wan.json
    # here, on the CPU: one results JSON with both models, the derived numbers, targets and xDiT's anchor
    python tools/bench_sp.py --merge-only --merge sp720_hunyuan.json sp720_wan.json \
        --out tools/results/bench_sp_720p_h100x8.json

Wheels: carry `.whl-sp/bundle.tar.xz` (28 MB: ray core, diffusers, xfuser, yunchang; rebuild with
`python3 ../shared/device/wheels.py --pack ray diffusers xfuser yunchang -d .whl-sp`). --merge refuses reports of
another card, quick flag, step count, repeats, LoRA rank, intervals or loop degree, and a run measured twice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lbdist.evaluate import realsize, sp_bench, sp_report
from lbdist.evaluate.timing import environment

TARGETS = [sp_report.SPTargets.from_dict(label, data) for label, data in
           json.loads(Path(__file__).with_name("targets.json").read_text())["bench_sp"].items()]


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, choices=realsize.names(),
                    help="default: wan-14b hunyuan-video; with --merge-only, the merged reports' models")
    ap.add_argument("--degrees", nargs="+", type=int, default=None, help="SP degrees measured by this call (1 2 4)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--intervals", nargs="+", type=int, default=None, help="N of each loop (default 6)")
    ap.add_argument("--interval", type=int, default=None, help="one N: the same as --intervals N")
    ap.add_argument("--loop-degree", type=int, default=None, help="degree of the loops (default: the largest)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per median (>= the targets' min_repeats)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--no-sp1-wrapper", dest="sp1_wrapper", action="store_false",
                    help="skip timing xfuser's wrapper at degree 1")
    ap.add_argument("--call-timeout", type=float, default=420.0, help="seconds one model may take on a group")
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON", help="earlier reports whose runs join this one")
    ap.add_argument("--merge-only", action="store_true", help="measure nothing: merge --merge reports (CPU)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_sp.json, else tools/results/)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, 2 gloo ranks, fp32")
    args = ap.parse_args(argv)
    if args.interval is not None and args.intervals is not None:
        ap.error("give --interval N or --intervals N [N ...], not both")
    args.intervals = args.intervals or ([args.interval] if args.interval is not None else None)
    return ap, args


def defaults(ap, args) -> list:
    """Fill what the mode leaves open; the parts to merge."""
    parts = []
    if args.merge_only:
        if not args.merge:
            ap.error("--merge-only needs --merge JSON [JSON ...]")
        parts = sp_report.load_parts(args.merge, warn=False)
        first = parts[0][1]
        args.quick, args.steps, args.repeats, args.lora_rank = bool(first.get("quick")), first["steps"], \
            first["repeats"], first["lora_rank"]
        args.intervals = args.intervals or first.get("intervals") or [first["interval"]]
        args.loop_degree = args.loop_degree or first.get("loop_degree")
        args.models = args.models or list(dict.fromkeys(n for _, r, _ in parts for n in r["models"]))
        args.degrees = []
    elif args.quick:
        args.models, args.steps = args.models or ["tiny-wan", "tiny-hunyuan-video"], 6
        args.degrees, args.intervals = args.degrees or [1, 2], args.intervals or [3, 2]
        args.repeats, args.warmup, args.lora_rank = 2, 1, 4
    else:
        args.models, args.degrees = args.models or ["wan-14b", "hunyuan-video"], args.degrees or [1, 2, 4]
    args.intervals = args.intervals or [6]
    return parts or (sp_report.load_parts(args.merge) if args.merge else [])


def main(argv=None) -> int:
    ap, args = parse(argv)
    try:
        parts = defaults(ap, args)
        merged = {int(k.split("/")[0]) for _, r, _ in parts for n, m in r["models"].items() if n in args.models
                  for k in m["runs"]}
        largest = max(set(args.degrees) | merged)
        args.loop_degree = args.loop_degree or largest
        run = sp_bench.SPRun(tuple(args.models), tuple(args.degrees), args.steps, tuple(args.intervals),
                             args.loop_degree, args.repeats, args.warmup, args.lora_rank, args.sp1_wrapper,
                             args.call_timeout, args.quick)
        error = sp_report.check_request(args.models, args.degrees, args.loop_degree, largest, args.repeats,
                                        args.steps, args.quick, args.merge_only, TARGETS)
        if error:
            ap.error(error)
        for name in args.models if not args.merge_only else ():
            for degree in args.degrees:
                realsize.check_split(name, degree)
        env = environment("diffusers", "ray", "xfuser")
        env.pop("card")  # the card is the workers' (set when a group starts) or the merged reports'
        report = sp_bench.new_report(run, env, merged)
        if parts:
            own = {k: report[k] for k in ("commit", "date")}
            sp_report.merge_into(report, parts, args.degrees)
            if args.merge_only:  # the numbers are the parts': name their commit, not this checkout's
                commits = report.get("commits") or [report["parts"][0]["commit"]]
                report.update(commit="+".join(map(str, commits)), merged=own)
    except (OSError, ValueError) as e:  # DegreeError and MergeError are ValueErrors
        ap.error(str(e))
    out = Path(args.out or (Path(os.environ["OUT"]) / "bench_sp.json" if os.environ.get("OUT") else
                            Path("tools/results") / ("bench_sp_quick.json" if args.quick else "bench_sp.json")))
    if args.merge_only:
        sp_bench.derive_all(report, args.models, args.loop_degree, args.steps, args.intervals, TARGETS)
        sp_report.write(report, out)
    else:
        sp_bench.measure_all(run, report, out, TARGETS, merged=bool(parts),
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"[bench_sp] wrote {out}", file=sys.stderr)
    print(sp_report.table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
