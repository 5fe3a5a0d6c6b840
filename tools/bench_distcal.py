r"""Distributed calibration benchmarks (issue 12): the cost cut on a bundled toy (`costcut`, CPU) and GPU scaling and
ZeRO-2 memory (`gpu`). The logic is `lbdist/evaluate/distcal.py`.

    # CPU: calibration cost at equal held-out error on a bundled toy (single-process trainer, which the
    # distributed one reproduces bridge for bridge; tests/test_zero.py)
    python tools/bench_distcal.py costcut --family hunyuan_video --interval 6 --cap 400 \
        --out tools/results/distcal_costcut_hunyuan_video_toy.json

    # GPU (not measured yet): Wan2.1-1.3B config at 480x832x81, 5 prompts, N=5; recording and training wall time
    # on 1 and 2 GPUs and the scaling efficiency; peak memory per GPU with ZeRO stage 0 and 2 for all bridges of
    # Wan2.1-14B trained together. The JSON is written after every phase.
    python tools/bench_distcal.py gpu --out tools/results/bench_distcal_h100.json
    python tools/bench_distcal.py gpu --quick --out /tmp/bench_distcal_quick.json   # the same code on the CPU

`gpu` starts a Ray cluster on this machine (`ray.init`). Recording stops after `--record-steps` steps per prompt
(full-schedule figures extrapolated linearly, labelled so); training runs `--epochs` epochs over the bridges
recorded (all-bridge figures extrapolated by bridge count, labelled so). Targets: tools/targets.json
"bench_distcal" (training >= 1.8x at 2 GPUs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lbdist.evaluate.distcal import PHASES, VARIANTS, CostCutSettings, GpuSettings, run_costcut, run_gpu

ROOT = Path(__file__).resolve().parents[1]


def costcut(args) -> int:
    settings = CostCutSettings(family=args.family, interval=args.interval, cap=args.cap, lr=args.lr,
                               calibration_prompts=args.calibration_prompts, heldout=args.heldout,
                               variants=tuple(args.variants), threads=args.threads, work=args.work)
    report = run_costcut(settings, args.out, log=lambda line: print(line, flush=True))
    for name, v in report["variants"].items():
        print(f"{name:22s} held-out {v['heldout_mean']:.4f} ({v.get('heldout_vs_reference', '-')} of ref)  "
              f"compute {v.get('compute_vs_reference', '-')}  cpu {v['cpu_seconds']} s")
    return 0


def gpu(args) -> int:
    if args.quick:
        import torch

        torch.set_num_threads(1)
    given = {k: getattr(args, k) for k in ("model", "memory_model", "prompts", "steps", "interval", "record_steps",
                                           "epochs", "work") if getattr(args, k) is not None}
    given.update(gpus=tuple(args.gpus), phases=tuple(args.phases))
    settings = GpuSettings.quick_settings(**given) if args.quick else GpuSettings(**given)
    report = run_gpu(settings, args.out)
    report["targets"] = json.loads((ROOT / "tools" / "targets.json").read_text())["bench_distcal"]
    train = report["phases"].get("train", [])
    if len(train) > 1 and not args.quick:  # CPU stand-ins say nothing about GPU scaling
        report["targets_met"] = {"training_speedup_2gpu": train[1]["speedup_vs_1"] >= report["targets"][
            "training_speedup_2gpu"]}
    from lbdist.evaluate.timing import write_json

    write_json(args.out, report, indent=1)
    print(json.dumps(report["phases"], indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("costcut", help="calibration cost at equal held-out error on a bundled toy (CPU)")
    c.add_argument("--family", default="hunyuan_video", choices=("wan", "hunyuan_video", "flux"))
    c.add_argument("--interval", type=int, default=6)
    c.add_argument("--cap", type=int, default=1000, help="epochs of the reference recipe (the recipes say 5000)")
    c.add_argument("--lr", type=float, default=None, help="default: the family's recipe rate")
    c.add_argument("--calibration-prompts", type=int, default=3)
    c.add_argument("--heldout", type=int, default=3)
    c.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--work", default="/tmp/lbdist-costcut")
    c.add_argument("--out", required=True)
    c.set_defaults(func=costcut)
    g = sub.add_parser("gpu", help="recording / training scaling and ZeRO-2 memory (GPU; --quick on the CPU)")
    g.add_argument("--quick", action="store_true", help="tiny Wan on CPU workers (gloo): the same code, minutes")
    g.add_argument("--model", default=None, help="realsize name recorded and trained (default wan-1.3b)")
    g.add_argument("--memory-model", default=None, help="realsize Wan name of the memory phase (default wan-14b)")
    for name in ("prompts", "steps", "interval", "record-steps", "epochs"):
        g.add_argument(f"--{name}", type=int, default=None, help="default: GpuSettings' (--quick: its quick ones)")
    g.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    g.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    g.add_argument("--work", default=None)
    g.add_argument("--out", required=True)
    g.set_defaults(func=gpu)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
