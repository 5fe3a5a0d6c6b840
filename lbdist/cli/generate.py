"""`lbdist generate`: one video (mp4/gif) or image (png), bridged or not, through `lbdist.Generator`.

    lbdist generate --model tiny:wan --prompt "a red circle moving left" --steps 20 --schedule 5 --out out/wan.mp4

Everything that can be checked without the model (request fields, output name and directory) is checked before
the model loads; the rest (sizes against the model, the adapter set against the schedule) before any step runs.
"""
from __future__ import annotations

import argparse

from ._common import add_model_args, add_request_args, output_format, request_fields, set_threads


def run(args: argparse.Namespace) -> int:
    from ..generation.request import GenerationRequest
    from ..storage import check_writable

    request = GenerationRequest(args.prompt, output_format=output_format(args.out), **request_fields(args))
    check_writable(args.out)
    set_threads(args.device)
    from ..generation.generator import Generator, GeneratorConfig
    from tqdm.auto import tqdm

    generator = Generator(args.model, GeneratorConfig(device=args.device, dtype=args.dtype))
    request = request.resolve(generator.info)
    bar = tqdm(total=request.num_inference_steps, desc=f"{generator.info.family} denoising", unit="step")
    result = generator.generate(request, progress=lambda done, total: bar.update(done - bar.n))
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
