"""`lbdist generate`: one video (mp4/gif) or image (png), bridged or not, through `lbdist.Generator`.

    lbdist generate --model tiny:wan --prompt "a red circle moving left" --steps 20 --schedule 5 --out out/wan.mp4

Everything is checked before the model's weights load: request fields, output name and directory, device and
dtype names, the adapter-set reference, and the request against the model's configs (sizes, frames, format, the
schedule against the steps; `lbdist.generation.preflight`). The adapter set's contents and coverage are checked
once it loads, before any step runs.
"""
from __future__ import annotations

import argparse

from ._common import add_model_args, add_request_args, output_format, request_fields, set_threads


def run(args: argparse.Namespace) -> int:
    from ..generation.request import GenerationRequest
    from ..storage import check_writable

    request = GenerationRequest(args.prompt, output_format=output_format(args.out), **request_fields(args))
    check_writable(args.out, "--out")
    from ..generation import preflight

    preflight.check_device(args.device)
    preflight.check_dtype(args.dtype)
    preflight.check_adapters(request.adapters)
    preflight.check_request(args.model, request)  # sizes, frames, schedule against the model, before its weights
    set_threads(args.device)
    from ..generation.generator import Generator, GeneratorConfig
    from tqdm.auto import tqdm

    generator = Generator(args.model, GeneratorConfig(device=args.device, dtype=args.dtype))
    request = request.resolve(generator.info)
    bars = []  # the bar appears with the first step, after the adapter set loaded and passed its checks

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=f"{generator.info.family} denoising", unit="step"))
        bars[0].update(done - bars[0].n)

    result = generator.generate(request, progress=progress)
    for bar in bars:
        bar.close()
    result.save(args.out)
    print(f"wrote {args.out} | {result.summary()}")
    return 0


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate one video (mp4/gif) or image (png), optionally bridged")
    add_model_args(g)
    g.add_argument("--prompt", required=True)
    add_request_args(g)
    g.add_argument("--out", required=True, help=".mp4/.gif for video models, .png for image models (path or URI)")
    g.set_defaults(func=run)
