r"""Issue 15 on the GPU: CFG-parallel, split VAE decode, compiled blocks, whole pipeline against the loop.

    python tools/bench_perf.py --quick        # CPU smoke test: tiny sizes, 2 gloo ranks, aot_eager (~9 min here)
    python tools/bench_perf.py --table tools/results/bench_perf_quick.json        # print a report's tables

Models: real-size configs of each family's `ModelSpec.real_sizes`, random bf16 weights built on the GPU:
`wan-14b` (Wan2.1-14B, 480x832x81, true CFG: two transformer calls a step) and `hunyuan-video-544p`
(HunyuanVideo, 544x960x49, one call). Whole pipeline = the family's diffusers pipeline with text encoders of the
released sizes (a T5-XXL encoder for Wan; a Llama-3-8B and CLIP-L for HunyuanVideo; word tokenizer) and the
released VAE configs, through lbdist's `Engine` (1 GPU) or a `WorkerGroup` (>1 GPU). Phases (`--phases`):
- layout: the layout rule's split per model for 1, 2, 4, 8 ranks (no compute).
- calls (1 GPU): one transformer call, full and final-block-only (a bridged call), eager and compiled; dynamo
  compilations counted after warm-up (must be 0); the bridge's ceiling per N from those costs.
- pipeline: 50-step generations (`--runs full N6 N7`): full compute, and bridged at N=6, 7 with random resident
  rank-32 adapter sets; text / loop (denoise) / decode / total seconds and compilations after a warm-up
  request; `--variants eager compiled`; on >1 GPU (`--layouts`) the rule's split (Wan: cfg 2) and, for
  two-branch models, Ulysses alone for comparison. The VAE decode is split over the ranks there.
- vae: decode of the size's latents: 1 GPU fp32 (reference), bf16, bf16 + tiling, bf16 + compile with the error
  against fp32; >1 GPU the split decode (lbdist.parallel.vae) against one GPU, both bf16.
The JSON (`--out`, default $OUT/bench_perf.json) is read first and updated after every phase and model, each
entry stamped with its card, commit and date, so calls accumulate into one report. Derived numbers
(`lbdist/evaluate/perf_report.py`; the runs: `lbdist/evaluate/perf.py`) are checked against `tools/targets.json` ("bench_perf"), the issue's: Wan2.1-14B
step at 2 GPUs >= 1.9x one GPU; whole-pipeline bridged speedup >= 0.9x the loop's (1 and 2 GPUs); compiled full
step >= 1.15x eager with the compiled bridge >= 0.97 of its ceiling; HunyuanVideo bridge x 2 GPUs whole
pipeline >= 10x one GPU full compute. The peers' published figures are stored beside them.

GPU plan (not run yet; estimates from the measured H100/H200 calls in /work/shared/STACK.md: Wan-14B 480p 3.2 s
a call, HunyuanVideo 544p 2.4 s a step; each call builds the models, ~1-2 min): env and wheels as in
tools/bench_sp.py (NCCL_NVLS_ENABLE=0 ..., PYTHONPATH=$PWD, LBDIST_COMMIT), `A="--out $OUT/perf.json"`, then
    1 GPU  --models wan-14b --gpus 1 --phases layout calls vae                          (~5 min)
    1 GPU  --models wan-14b --gpus 1 --phases pipeline --variants eager --runs full     (~7 min)
    1 GPU  --models wan-14b --gpus 1 --phases pipeline --variants eager --runs N6 N7    (~5 min)
    1 GPU  the same two with --variants compiled                                        (~13 min)
    1 GPU  --models hunyuan-video-544p --gpus 1 --phases calls vae pipeline --variants eager   (~8 min)
    1 GPU  --models hunyuan-video-544p --gpus 1 --phases pipeline --variants compiled   (~7 min)
    2 GPUs --models wan-14b --gpus 2 --phases pipeline vae --layouts rule --variants eager     (~8 min)
    2 GPUs --models wan-14b --gpus 2 --phases pipeline --layouts ulysses --variants eager      (~8 min)
    2 GPUs --models hunyuan-video-544p --gpus 2 --phases pipeline vae                   (~9 min)
copying $OUT/perf.json into the tree between calls (untracked files travel), ~70 min of device time in all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from lbdist.evaluate.perf import PHASES, PerfSettings, phase_layout, run_phase
from lbdist.evaluate.perf_report import check, derive, merge, table
from lbdist.evaluate.timing import environment, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("wan-14b", "hunyuan-video-544p")
QUICK_MODELS = ("tiny-wan", "tiny-hunyuan-video")


def parse(argv) -> tuple[argparse.Namespace, PerfSettings]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, 2 gloo ranks, fp32, aot_eager")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--gpus", nargs="+", type=int, default=[1, 2], help="GPU counts (ranks) to measure")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    ap.add_argument("--variants", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--runs", nargs="+", default=None, help="pipeline runs: full N6 N7 (default all)")
    ap.add_argument("--layouts", nargs="+", default=["rule", "ulysses"], choices=["rule", "ulysses"],
                    help="on >1 GPU: the layout rule's split, and Ulysses alone for two-branch models")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--intervals", nargs="+", type=int, default=None)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vae-repeats", type=int, default=3)
    ap.add_argument("--compile-backend", default=None, help="default inductor (--quick: aot_eager)")
    ap.add_argument("--compile-mode", default=None)
    ap.add_argument("--call-timeout", type=float, default=900.0)
    ap.add_argument("--out", default=None, help="JSON (read first if it exists, updated after every phase)")
    ap.add_argument("--table", default=None, metavar="JSON", help="print the tables of a results JSON and exit")
    args = ap.parse_args(argv)
    q = args.quick
    args.models = args.models or list(QUICK_MODELS if q else MODELS)
    intervals = tuple(args.intervals or ((3, 4) if q else (6, 7)))
    settings = PerfSettings(
        device="cpu" if q else "cuda", dtype="float32" if q else "bfloat16", steps=args.steps or (8 if q else 50),
        intervals=intervals, runs=tuple(args.runs or ["full", *(f"N{n}" for n in intervals)]),
        variants=tuple(args.variants), layouts=tuple(args.layouts), lora_rank=args.lora_rank,
        repeats=1 if q else args.repeats, warmup=1 if q else args.warmup, vae_repeats=1 if q else args.vae_repeats,
        compile_backend=args.compile_backend or ("aot_eager" if q else "inductor"), compile_mode=args.compile_mode,
        call_timeout=args.call_timeout, quick=q)
    default = ROOT / "tools" / "results" / ("bench_perf_quick.json" if q else "bench_perf.json")
    args.out = Path(args.out or (Path(os.environ["OUT"]) / "bench_perf.json" if os.environ.get("OUT") else default))
    return args, settings


def start_ray(args, settings: PerfSettings) -> None:
    if any(g > 1 for g in args.gpus) and {"pipeline", "vae"} & set(args.phases):
        import ray

        if not ray.is_initialized():
            ray.init(**({"num_cpus": 2, "num_gpus": 0} if settings.quick else {}), include_dashboard=False,
                     log_to_driver=False)


def main(argv=None) -> int:
    args, settings = parse(argv)
    if args.table:
        print(table(read_json(args.table)))
        return 0
    if settings.quick:
        import torch

        torch.set_num_threads(1)
    report = read_json(args.out) or {"models": {}}
    report["env"] = {**environment("diffusers", "xfuser"), "benchmark": "bench_perf", "settings": vars(settings)}
    report["targets"] = json.loads((ROOT / "tools" / "targets.json").read_text())["bench_perf"]
    start_ray(args, settings)
    with tempfile.TemporaryDirectory() as folder:
        for phase in args.phases:
            if phase == "layout":
                report["layout"] = phase_layout(args.models)
                write_json(args.out, report)
                continue
            for name in args.models:
                model = report["models"].setdefault(name, {})
                result = run_phase(phase, name, tuple(args.gpus), settings, Path(folder) / name)
                merge(model.setdefault(phase, {}), result, report["env"])
                model["derived"] = derive(model, settings.steps, settings.intervals)
                model["targets_met"] = check(name, model, report["targets"])
                write_json(args.out, report)
                print(f"[{phase}] {name} done -> {args.out}", flush=True)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
