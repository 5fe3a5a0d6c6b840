"""Contact sheet of a toy pipeline's samples: a PNG grid of (first, middle, last) frames, adherence and prompt.

    python tools/contact_sheet.py --family wan --out wan_sheet.png            # bundled model, held-out prompts
    python tools/contact_sheet.py --family flux --path out/flux --prompts calibration --n 8 --out sheet.png

Prints the mean prompt adherence of the samples drawn (`lbdist/toy/metric.py`).
"""
from __future__ import annotations

import argparse
import os
import sys

from lbdist.models import get_spec_by_family
from lbdist.toy.bundled import PIPELINE_CLASSES, load_toy
from lbdist.toy.dataset import calibration_prompts, evaluation_prompts
from lbdist.toy.evaluate import contact_sheet, evaluate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", required=True, choices=tuple(PIPELINE_CLASSES))
    p.add_argument("--path", default=None, help="pipeline directory (default: the bundled toy model)")
    p.add_argument("--prompts", default="heldout", choices=("heldout", "calibration"))
    p.add_argument("--n", type=int, default=12, help="number of prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's defaults)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kind = get_spec_by_family(args.family).output
    if args.prompts == "heldout":
        prompts = evaluation_prompts(kind, n=min(args.n, len(evaluation_prompts(kind))))
    else:
        prompts = calibration_prompts(kind, n=args.n)
    pipe, defaults = load_toy(args.family, device=args.device, path=args.path)
    overrides = {"num_inference_steps": args.steps} if args.steps else {}
    report = evaluate(pipe, prompts, defaults, seeds=(args.seed,), **overrides)
    contact_sheet(report["samples"], report["captions"], args.out, columns=args.columns)
    print(f"{args.family}: adherence {report['adherence']:.3f} over {report['n']} samples "
          f"{report['per_attribute']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
