"""`lbdist demo`: calibrate the bundled Wan toy from 3 prompts and show it beside full compute, the uncalibrated
bridge and TaylorSeerCache lite (README's main job).

    lbdist demo --out out/demo

Every option is checked before any work (`DemoConfig`: prompt count, the shown prompt against the toy grammar,
interval, steps; the output directory): a bad value is one line and exit code 2 within a second.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo
    from ..storage import check_writable_dir

    options = dict(model=args.model, interval=args.interval, steps=args.steps, calibration_prompts=args.prompts,
                   validation_prompts=args.validation_prompts, prompt=args.prompt, epochs=args.epochs)
    config = DemoConfig(**{k: v for k, v in options.items() if v is not None})  # every value checked here
    check_writable_dir(args.out, "--out")
    report = run_demo(args.out, config)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/side_by_side.mp4, side_by_side.gif, report.md, report.json "
          f"in {report['total_seconds']:.0f} s")
    return 0


def register(sub) -> None:
    d = sub.add_parser("demo", help="calibrate the bundled Wan toy from 3 prompts and show it beside full "
                       "compute, the uncalibrated bridge and TaylorSeerCache lite")
    d.add_argument("--out", default="out/demo", help="directory for side_by_side.mp4/.gif and report.md/.json")
    d.add_argument("--model", default="toy:wan", help="pipeline source (default: the bundled Wan toy)")
    d.add_argument("--interval", type=int, default=None, help="bridge schedule N (default 5)")
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    d.add_argument("--prompts", type=int, default=None, help="calibration prompts (3-5, default 3)")
    d.add_argument("--validation-prompts", type=int, default=None,
                   help="validation prompts for early stopping (training-split combinations, default 6)")
    d.add_argument("--prompt", default=None, help="held-out prompt to show (default: the first evaluation prompt)")
    d.add_argument("--epochs", type=int, default=None, help="epoch cap per bridge (default: DemoConfig's)")
    d.set_defaults(func=run)
