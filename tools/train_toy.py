"""Train one bundled toy pipeline (Wan, HunyuanVideo or FLUX architecture) on the procedural data set.

    python tools/train_toy.py --family wan --minutes 8 --device cuda --out lbdist/toy/weights/wan

writes a diffusers pipeline (`WanPipeline.from_pretrained(out)` loads it offline) with `lbdist_defaults.json`
(call arguments), `lbdist_eval.json` (held-out prompt adherence with full compute, loss curve, steps) and
`samples.png` (contact sheet of held-out samples). `--resume` continues from `<out>.ckpt.pt`; `--quick` runs a
few CPU steps at test size (seconds). All three families at once on one GPU: `tools/train_toys_gpu.sh`.
The method is described in `lbdist/toy/train.py`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from lbdist.toy.build import FAMILIES
from lbdist.toy.train import TrainConfig, quick_config, train_toy


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--out", required=True, help="directory of the finished pipeline (replaced atomically)")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget, all phases (default 8)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if one exists")
    p.add_argument("--quick", action="store_true", help="a few CPU steps at test size (for tests)")
    p.add_argument("--ckpt", default=None, help="checkpoint path (default <out>.ckpt.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="transformer batch (default 256)")
    p.add_argument("--vae-batch", type=int, default=None, help="VAE batch (default 32)")
    p.add_argument("--bank", type=int, default=None, help="rendered training scenes kept (default 8192)")
    p.add_argument("--vae-fraction", type=float, default=None, help="share of the budget for the VAE (0.2)")
    p.add_argument("--reserve-minutes", type=float, default=None, help="kept for evaluation and saving (0.75)")
    p.add_argument("--lr", type=float, default=None, help="transformer peak learning rate (5e-4)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first n held-out prompts")
    p.add_argument("--eval-seeds", type=int, default=None, help="samples per held-out prompt (default 2)")
    p.add_argument("--eval-steps", type=int, default=None, help="denoising steps of the evaluation")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-vae-steps", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    options = {k: getattr(args, k) for k in ("batch", "vae_batch", "bank", "vae_fraction", "reserve_minutes", "lr",
                                              "eval_limit", "eval_seeds", "eval_steps", "max_steps", "max_vae_steps",
                                              "log_every", "ckpt") if getattr(args, k) is not None}
    common = dict(device=args.device, resume=args.resume, seed=args.seed)
    if args.quick:
        return quick_config(args.family, args.out, **common, **options)
    return replace(TrainConfig(family=args.family, out=args.out, minutes=args.minutes), **common, **options)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = train_toy(config_from_args(parse_args(argv)))
    return 0 if summary["heldout_adherence"] == summary["heldout_adherence"] else 1  # NaN -> failure


if __name__ == "__main__":
    sys.exit(main())
