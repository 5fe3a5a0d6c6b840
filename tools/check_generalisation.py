r"""Does a calibrated adapter set generalise beyond its calibration prompts? One model, one schedule.

    python tools/check_generalisation.py --family hunyuan_video --interval 6 --lr 2e-3 3e-4 --epochs 80 \
        --out tools/results/generalisation_hunyuan_toy.json

For each learning rate (`lbdist.evaluate.generalisation`): calibrate LearniBridge on the bundled toy
(`toy:<family>`) from 3 calibration prompts (seeds 0, 1, 2; rank 8, at most `--epochs` per bridge), then the
relative L2 of the final latents against full compute, uncalibrated and calibrated bridge, on the calibration
prompts (same seeds) and on held-out evaluation prompts; every generation through `Engine`. Calibration that fits
but does not generalise lowers the first and raises the second. CPU, a few minutes per learning rate. Writes JSON
(card, commit, date) and prints one line per learning rate.
"""
from __future__ import annotations

import argparse
import json
import os

from lbdist.toy.build import FAMILIES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="hunyuan_video", choices=FAMILIES, help="a family with a bundled toy")
    p.add_argument("--model", default=None, help="model reference (default: the bundled toy:<family>)")
    p.add_argument("--interval", type=int, default=6)
    p.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--heldout", type=int, default=2, help="held-out evaluation prompts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from lbdist.evaluate.generalisation import GeneralisationConfig, check_generalisation
    from lbdist.evaluate.timing import environment, write_json

    torch.set_num_threads(args.threads)
    config = GeneralisationConfig(args.model or f"toy:{args.family}", args.interval, tuple(args.lr), args.epochs,
                                  heldout=args.heldout)
    report = check_generalisation(config, log=lambda run: print(json.dumps(run), flush=True))
    write_json(args.out, {"benchmark": "check_generalisation", **environment(), **report}, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
