r"""Does calibration generalise? Issue 17's fair protocol on a bundled toy, one family, several intervals.

    python tools/check_generalisation.py --family hunyuan_video --intervals 5 6 7 \
        --out tools/results/generalisation_hunyuan_video.json

Per interval N (`lbdist.evaluate.generalisation`): calibrate on 4 training-combination prompts (early stopping on
6 validation prompts), then 16 held-out prompts x 2 seeds (used nowhere else) against full compute: the
uncalibrated bridge (cached input), the uncalibrated bridge on the extrapolated input, and the calibrated one,
same schedule (warm-up included). Prints mean and 95% interval over prompts, and the paired difference
calibrated - uncalibrated with its interval. `--recipe paper` calibrates with the paper's recipe. Writes JSON
(card, commit, date) after every interval, without the per-sample rows unless --rows. CPU: about 10-25 minutes
per interval on the toys.
"""
from __future__ import annotations

import argparse
import json
import os

from lbdist.toy.build import FAMILIES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="hunyuan_video", choices=FAMILIES)
    p.add_argument("--model", default=None, help="model reference (default: the bundled toy:<family>)")
    p.add_argument("--intervals", type=int, nargs="+", default=[5, 6, 7])
    p.add_argument("--recipe", default="lbdist", choices=("lbdist", "paper"))
    p.add_argument("--objective", default=None, choices=("hidden", "output", "guided"), help="override the recipe's")
    p.add_argument("--bridge-input", default=None, choices=("cached", "extrapolate"), help="override the recipe's")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--evaluation-prompts", type=int, default=16)
    p.add_argument("--evaluation-seeds", type=int, default=2)
    p.add_argument("--seeds-per-prompt", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--rows", action="store_true", help="keep the per-sample rows in the JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from lbdist.evaluate.generalisation import GeneralisationConfig, recipe_train, run_generalisation, slim
    from lbdist.evaluate.timing import environment, write_json

    torch.set_num_threads(args.threads)
    config = GeneralisationConfig(args.family, tuple(args.intervals), model=args.model,
                                  evaluation_prompts=args.evaluation_prompts, evaluation_seeds=args.evaluation_seeds,
                                  seeds_per_prompt=args.seeds_per_prompt,
                                  train=recipe_train(args.recipe, args.rank, args.epochs, args.objective,
                                                     args.bridge_input),
                                  **({"methods": tuple(args.methods)} if args.methods else {}))

    def save(report):
        write_json(args.out, {"benchmark": "check_generalisation", **environment(),
                              **(report if args.rows else slim(report))}, indent=1)

    run_generalisation(config, log=lambda row: print(json.dumps(row), flush=True), on_interval=save)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
