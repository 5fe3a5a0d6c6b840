"""`lbdist render`: a prompts file (txt or jsonl) to videos or images on a Ray cluster, resumable, with a manifest.

    lbdist render prompts.txt --out out/batch --model tiny:wan --actors 1:2 --steps 20 --schedule 5

Connects to the Ray cluster that RAY_ADDRESS (or a local `ray start`) names, else starts a local one. Exit 0 when
every item rendered; 1 when some item failed or some line was bad (the rest still rendered; see the manifest);
2 for bad arguments. Run it again on the same --out to render only what is missing or failed.
"""
from __future__ import annotations

import argparse


def parse_actors(text: str) -> tuple[int, int] | None:
    """"auto", "N" or "MIN:MAX" -> None or (min, max); ValueError naming the value otherwise."""
    if text == "auto":
        return None
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high) if sep else int(low))
    except ValueError:
        bounds = (0, 0)
    if not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"--actors {text!r}: use N, MIN:MAX (1 <= MIN <= MAX) or auto")
    return bounds


def parse_adapter_sets(values: list[str] | None) -> dict[str, str]:
    """NAME=REF pairs (repeatable --adapter-set) -> {name: ref}."""
    out = {}
    for value in values or []:
        name, sep, ref = value.partition("=")
        if not sep or not name or not ref:
            raise ValueError(f"--adapter-set {value!r}: use NAME=REF (a directory, URI or Hub id)")
        out[name] = ref
    return out


def defaults_from(args: argparse.Namespace) -> dict:
    """The request fields every line starts from (only those given)."""
    fields = dict(num_inference_steps=args.steps, schedule=args.schedule, adapters=args.adapters, seed=args.seed,
                  height=args.height, width=args.width, num_frames=args.frames, guidance_scale=args.guidance,
                  output_format=args.format, negative_prompt=args.negative_prompt, fps=args.fps)
    return {k: v for k, v in fields.items() if v is not None}


def config_from(args: argparse.Namespace):
    """The `RenderConfig` the arguments ask for (ValueError naming a bad one; nothing starts)."""
    from ..generation.request import GenerationRequest
    from ..render import RenderConfig

    defaults = defaults_from(args)
    GenerationRequest("defaults check", **defaults)
    config = RenderConfig(actors=parse_actors(args.actors), sp_degree=args.sp_degree, defaults=defaults,
                          adapters=parse_adapter_sets(args.adapter_set), device=args.device, dtype=args.dtype,
                          gpus=False if args.cpu else None, cpus_per_actor=args.cpus_per_actor,
                          retry_failed=not args.keep_failed, log_every_s=args.log_every)
    config.generator_config(gpus=False)  # degree arithmetic and adapter names, before Ray starts
    return config


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from ..render import render

    config = config_from(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = render(args.prompts, args.out, args.model, config)
    print(report.summary())
    if report.ok:
        return 0
    reasons = [f"{n} {what}" for n, what in ((report.failed, "items failed"), (report.invalid, "bad lines"),
                                              (report.skipped_failed, "items failed before (kept)")) if n]
    print(f"lbdist render: {', '.join(reasons)}; see {report.manifest}", file=sys.stderr)
    return 1


def register(sub) -> None:
    r = sub.add_parser("render", help="render a prompts file (txt or jsonl) on a Ray actor pool, resumable")
    r.add_argument("prompts", help="prompts file (path or URI): .txt one prompt per line ('#' comments), or .jsonl "
                                   "objects with prompt and overrides (seed, height, width, num_frames, steps, "
                                   "guidance, schedule, adapters, output_format, id)")
    r.add_argument("--out", required=True, help="output directory or URI (outputs, records/, manifest.jsonl)")
    r.add_argument("--model", required=True, help="Hub id, local diffusers folder, toy:<family> or tiny:<family>")
    r.add_argument("--actors", default="auto", help="actor pool size: N, MIN:MAX, or auto (1 .. the cluster's "
                                                    "GPUs / sp-degree)")
    r.add_argument("--sp-degree", type=int, default=1, help="GPUs per actor (sequence parallel); default 1")
    r.add_argument("--device", default="auto", help="device of SP-1 actors (auto: the actor's GPU, else cpu)")
    r.add_argument("--dtype", default="auto", help="bfloat16, float16, float32, or auto")
    r.add_argument("--cpu", action="store_true", help="CPU actors even on a cluster with GPUs (smoke runs)")
    r.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor (per rank for SP > 1)")
    r.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    r.add_argument("--schedule", default=None, help="bridge schedule: N, periodic:N[:w=W][:z=Z] or steps:0,5,...")
    r.add_argument("--adapters", default=None, help="adapter set for every line (a directory, URI, Hub id, or a "
                                                    "--adapter-set name); needs --schedule")
    r.add_argument("--adapter-set", action="append", metavar="NAME=REF",
                   help="a named adapter set that jsonl lines may pick with \"adapters\": NAME (repeatable)")
    r.add_argument("--seed", type=int, default=None, help="seed of lines that give none (default 0)")
    r.add_argument("--height", type=int, default=None)
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--frames", type=int, default=None, help="video frames (4k+1)")
    r.add_argument("--guidance", type=float, default=None)
    r.add_argument("--negative-prompt", default=None)
    r.add_argument("--fps", type=int, default=None)
    r.add_argument("--format", default=None, choices=("mp4", "gif", "png", "np"), help="output format (default: "
                                                                                       "mp4 for video, png for images)")
    r.add_argument("--keep-failed", action="store_true", help="do not render again items that failed before")
    r.add_argument("--log-every", type=float, default=30.0, help="seconds between progress log lines")
    r.set_defaults(func=run)
