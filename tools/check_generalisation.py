"""Does a calibrated adapter set generalise beyond its calibration prompts? One model, one schedule.

    python tools/check_generalisation.py --family hunyuan_video --interval 6 --lr 2e-3 3e-4 --epochs 80 \
        --out tools/results/generalisation_hunyuan_toy.json

For each learning rate: calibrate LearniBridge on the bundled toy (`toy:<family>`) from 3 calibration prompts
(seeds 0, 1, 2; rank 8, at most `--epochs` per bridge), then measure the relative L2 of the final latents
against full compute, uncalibrated bridge and calibrated bridge, on the calibration prompts themselves (same
seeds) and on held-out evaluation prompts. Calibration that fits but does not generalise lowers the first
and raises the second. CPU, a few minutes per learning rate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="hunyuan_video", choices=("wan", "hunyuan_video", "flux"))
    p.add_argument("--interval", type=int, default=6)
    p.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--heldout", type=int, default=2, help="held-out evaluation prompts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from lbdist.bridge import Schedule, disable_bridge, enable_bridge
    from lbdist.calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters
    from lbdist.generate import call_arguments, run_generation
    from lbdist.io import atomic_write
    from lbdist.pipelines import load_pipeline
    from lbdist.toy.dataset import calibration_prompts, evaluation_prompts

    torch.set_num_threads(args.threads)
    kind = "image" if args.family == "flux" else "video"
    loaded = load_pipeline(f"toy:{args.family}", device="cpu", dtype="float32")
    steps = int(loaded.call_defaults.get("num_inference_steps", 50))
    schedule = Schedule.periodic(steps, args.interval)
    calib, seeds = calibration_prompts(kind, 3), (0, 1, 2)
    held = evaluation_prompts(kind)[:args.heldout]
    call = {k: v for k, v in call_arguments(loaded, steps, None).items() if k != "num_inference_steps"}

    references: dict[tuple[str, int], torch.Tensor] = {}  # full-compute final latents, shared by every run

    def error(prompt: str, seed: int, adapters) -> float:
        if (prompt, seed) not in references:
            disable_bridge(loaded.pipe)
            references[prompt, seed] = run_generation(loaded, prompt, steps=steps, seed=seed, keep_latents=True).latents
        ref = references[prompt, seed]
        enable_bridge(loaded.pipe, schedule, adapters=adapters)
        out = run_generation(loaded, prompt, steps=steps, seed=seed, keep_latents=True).latents
        disable_bridge(loaded.pipe)
        return float((out - ref).norm() / ref.norm())

    report = {"family": args.family, "interval": args.interval, "steps": steps, "epochs": args.epochs,
              "calibration_prompts": calib, "heldout_prompts": held, "runs": []}
    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        record_pairs(loaded.pipe, schedule, RecordConfig(tuple(calib), seeds, call), f"{work}/pairs", progress=False)
        record_seconds = time.perf_counter() - t  # the pairs do not depend on the learning rate: recorded once
        for lr in args.lr:
            t = time.perf_counter()
            adapters = train_adapters(loaded.pipe.transformer, f"{work}/pairs", f"{work}/adapters-{lr}",
                                      TrainConfig(rank=8, alpha=16.0, lr=lr, max_epochs=args.epochs, eval_every=25,
                                                  patience=2, holdout_prompts=0), progress=False)
            run = {"lr": lr, "calibration_seconds": round(record_seconds + time.perf_counter() - t, 1)}
            for split, prompts, split_seeds in (("calibration", calib, seeds), ("heldout", held, (0,) * len(held))):
                for label, chosen in (("uncalibrated", None), ("calibrated", adapters)):
                    run[f"{split}_{label}"] = [round(error(p, s, chosen), 5) for p, s in zip(prompts, split_seeds)]
            print(json.dumps(run), flush=True)
            report["runs"].append(run)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
