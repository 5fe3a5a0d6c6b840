"""The `lbdist` command line: `lbdist generate ...` (and the subcommands other modules register).

    lbdist generate --model tiny:wan --prompt "a red circle moving left" --steps 20 --schedule 5 --out out/wan.mp4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="Hub id or local diffusers folder (HF_HUB_OFFLINE=1 for offline), "
                        "toy:<family> (bundled trained toy) or tiny:<family> (random, built in code)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (default)")
    p.add_argument("--dtype", default="auto", help="bfloat16, float16, float32, or auto (bf16 on GPU, fp32 on CPU)")


def _schedule(text: str | None, steps: int):
    from .bridge import Schedule

    if text in (None, "", "full"):
        return None
    return Schedule.parse(text, steps)


def cmd_generate(args: argparse.Namespace) -> int:
    from .bridge import enable_bridge
    from .generate import run_generation
    from .io import save_image, save_video
    from .pipelines import load_pipeline

    out = Path(args.out)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"steps must be >= 1, got {args.steps}")
    loaded = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    allowed = (".mp4", ".gif") if loaded.is_video else (".png",)
    if out.suffix.lower() not in allowed:
        raise ValueError(f"--out {args.out!r}: a {loaded.family} model writes {' or '.join(allowed)} files")
    steps = args.steps if args.steps is not None else loaded.call_defaults.get("num_inference_steps", 50)
    schedule = _schedule(args.schedule, steps)
    if args.adapters and schedule is None:
        raise ValueError("--adapters needs --schedule (the schedule the adapter set was calibrated for)")
    if schedule is not None:
        enable_bridge(loaded.pipe, schedule, adapters=args.adapters)
    loaded.pipe.set_progress_bar_config(disable=False, desc=f"{loaded.family} denoising")
    overrides = dict(height=args.height, width=args.width, num_frames=args.frames,
                     guidance_scale=args.guidance, negative_prompt=args.negative_prompt)
    result = run_generation(loaded, args.prompt, steps=steps, seed=args.seed, overrides=overrides)
    if loaded.is_video:
        save_video(result.frames, out, fps=args.fps)
    else:
        save_image(result.frames[0], out)
    s = result.stats
    full = s.get("full", result.steps)
    bridged = s.get("bridged", 0)
    print(f"wrote {out} | {result.steps} steps: transformer calls full {full}, bridged {bridged} "
          f"(calibrated {s.get('calibrated', 0)}) | transformer {result.transformer_seconds:.3f} s | "
          f"total {result.total_seconds:.3f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    options = dict(model=args.model, interval=args.interval, steps=args.steps, calibration_prompts=args.prompts,
                   prompt=args.prompt, epochs=args.epochs)
    config = DemoConfig(**{k: v for k, v in options.items() if v is not None})
    report = run_demo(args.out, config)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/side_by_side.mp4, side_by_side.gif, report.md, report.json "
          f"in {report['total_seconds']:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbdist", description="LearniBridge for diffusers DiTs")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate one video (mp4/gif) or image (png), optionally bridged")
    _add_model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    g.add_argument("--schedule", default=None,
                   help="bridge schedule: N, periodic:N[:w=W][:z=Z] or steps:0,5,...; omit for full compute")
    g.add_argument("--adapters", default=None, help="adapter set directory or Hub id (from lbdist calibrate)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--frames", type=int, default=None, help="video frames (video models)")
    g.add_argument("--guidance", type=float, default=None, help="guidance scale")
    g.add_argument("--fps", type=int, default=8)
    g.add_argument("--out", required=True, help=".mp4/.gif for video models, .png for FLUX")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="calibrate the bundled Wan toy from 3 prompts and show it beside full compute")
    d.add_argument("--out", default="out/demo", help="directory for side_by_side.mp4/.gif and report.md/.json")
    d.add_argument("--model", default="toy:wan", help="pipeline source (default: the bundled Wan toy)")
    d.add_argument("--interval", type=int, default=5, help="bridge schedule N")
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    d.add_argument("--prompts", type=int, default=3, help="calibration prompts (3-5)")
    d.add_argument("--prompt", default=None, help="held-out prompt to show (default: the first evaluation prompt)")
    d.add_argument("--epochs", type=int, default=None, help="epoch cap per bridge (default: DemoConfig's)")
    d.set_defaults(func=cmd_demo)

    for register in _extra_commands():
        register(sub, _add_model_args)
    return parser


def _extra_commands():
    """Subcommands defined beside the code they drive (calibration, ...), registered here."""
    registers = []
    try:
        from .calibrate.cli import register as calibrate_register
        registers.append(calibrate_register)
    except ImportError:
        pass
    return registers


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"lbdist {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
