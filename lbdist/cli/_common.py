"""Arguments and checks shared by the subcommands (no heavy imports here)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="Hub id or local diffusers folder (HF_HUB_OFFLINE=1 for offline), "
                        "toy:<family> (bundled trained toy) or tiny:<family> (random, built in code)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (default)")
    p.add_argument("--dtype", default="auto", help="bfloat16, float16, float32, or auto (bf16 on GPU, fp32 on CPU)")


def add_request_args(p: argparse.ArgumentParser) -> None:
    """The fields of a GenerationRequest besides the prompt."""
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    p.add_argument("--schedule", default=None,
                   help="bridge schedule: N, periodic:N[:w=W][:z=Z] or steps:0,5,...; omit for full compute")
    p.add_argument("--adapters", default=None, help="adapter set: directory, URI or Hub id (from lbdist calibrate)")
    p.add_argument("--allow-uncovered", action="store_true",
                   help="accept an adapter set covering only part of the schedule (the rest runs uncalibrated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="video frames (video models: 4k+1)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale")
    p.add_argument("--fps", type=int, default=16, help="frames per second of a written video")


def request_fields(args: argparse.Namespace) -> dict:
    return dict(negative_prompt=args.negative_prompt, num_inference_steps=args.steps, schedule=args.schedule,
                adapters=args.adapters, allow_uncovered=args.allow_uncovered, seed=args.seed, height=args.height,
                width=args.width, num_frames=args.frames, guidance_scale=args.guidance, fps=args.fps)


def output_format(out: str) -> str:
    """The output format a file name asks for (.mp4, .gif, .png), or ValueError naming the name."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in ("mp4", "gif", "png"):
        raise ValueError(f"--out {out!r}: use a .mp4 or .gif file (video models) or a .png file (image models)")
    return suffix


def set_threads(device: str | None = "auto") -> int:
    """One torch thread per process on the CPU unless the user says otherwise (`lbdist.runtime.default_threads`)."""
    from ..runtime import default_threads

    return default_threads(device)
