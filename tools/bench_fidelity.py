r"""Fidelity of LearniBridge and its peers against full compute, compared at equal speedup, on the toy models.

    python tools/bench_fidelity.py --model toy --families wan hunyuan_video flux --prompts 4 --calibration-prompts 3 \
        --train-epochs 80 --knobs learnibridge=3,6,12,17,25 bridge_uncal=3,6,12,17,25 --out out/fidelity
    python tools/bench_fidelity.py --quick --out /tmp/fidelity_quick       # CI smoke run, about a minute

Per family (`lbdist.evaluate.fidelity.run_family`): calibrate LearniBridge per interval and MagCache's ratios on
calibration prompts, then full compute and every method x knob (`lbdist.evaluate.METHODS`) on held-out prompts,
every generation through `Engine` under a `CostMeter` (speedup = full-compute FLOPs / executed FLOPs); PSNR / SSIM
of the frames, relative L2 of the final latents, prompt adherence. The verdict uses issue 7's bar from
tools/targets.json. Writes `results.json` (card, commit, date), `table.md` and `plots/<family>.png` to --out;
finished cells are reused on a rerun (`<out>/cells/`). `--model toy-random`: the toy architectures with random
weights (timing only); `--quick`: tiny random pipelines, 2 prompts, 8 steps, 2 knobs per method (numbers mean
nothing). Cost on 2 CPU cores: about 3 hours for the three toys at 8 prompts (--families, --prompts, --knobs and
--train-epochs bound it).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from lbdist.evaluate import METHODS
from lbdist.evaluate.fidelity import MODELS, QUICK_TRAIN, TOY_TRAIN, FidelityConfig, run_family, toy_families
from lbdist.evaluate.report import Targets, markdown, plot_family
from lbdist.evaluate.timing import environment, write_json
from lbdist.storage import write_text

TARGETS = Targets.from_dict({k: v for k, v in json.loads(Path(__file__).with_name("targets.json").read_text())[
    "bench_fidelity"].items() if not k.startswith("_")})


def parse_knobs(items) -> dict:
    out = {}
    for item in items or ():
        name, _, values = item.partition("=")
        try:
            out[name] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise SystemExit(f"--knobs {item!r}: expected method=v1,v2,... with numbers") from None
    return out


def config_from(args) -> FidelityConfig:
    train = TOY_TRAIN
    if args.train_epochs is not None:
        train = replace(train, max_epochs=args.train_epochs)
    if args.train_rank is not None:
        train = replace(train, rank=args.train_rank, alpha=2.0 * args.train_rank)
    sizes = dict(model=args.model, prompts=args.prompts, calibration_prompts=args.calibration_prompts,
                 steps=args.steps, train=train)
    if args.quick:
        sizes = dict(model="tiny", prompts=min(args.prompts, 2), calibration_prompts=2, steps=args.steps or 8,
                     quick=True, train=QUICK_TRAIN)
    return FidelityConfig(families=tuple(args.families), methods=tuple(args.methods), knobs=parse_knobs(args.knobs),
                          keep_pairs=args.keep_pairs, targets=TARGETS, **sizes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", choices=MODELS)
    ap.add_argument("--families", nargs="+", default=list(toy_families()), choices=toy_families())
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--prompts", type=int, default=8, help="evaluation prompts per family")
    ap.add_argument("--calibration-prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 50 for the toys)")
    ap.add_argument("--knobs", nargs="*", default=[], metavar="METHOD=V1,V2", help="override a method's sweep")
    ap.add_argument("--out", default="tools/results/fidelity")
    ap.add_argument("--train-epochs", type=int, default=None,
                    help=f"LearniBridge epochs cap per bridge (default {TOY_TRAIN.max_epochs})")
    ap.add_argument("--train-rank", type=int, default=None, help=f"LearniBridge LoRA rank (default {TOY_TRAIN.rank})")
    ap.add_argument("--keep-pairs", action="store_true")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: tiny models, 2 prompts, 8 steps, 2 knobs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # FasterCache warns on every apply
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # adapter sets swap on one block
    config, out, started = config_from(args), Path(args.out), time.perf_counter()
    results = {"benchmark": "bench_fidelity", **environment(), "config": config.record(), "families": {}}
    for family in config.families:
        results["families"][family] = run_family(config, family, out, log=lambda line: print(line, flush=True))
        write_json(out / "results.json", results, indent=1)
    for family, fam in results["families"].items():
        plot_family(family, fam, out / "plots" / f"{family}.png", band=TARGETS.band)
    write_text(out / "table.md", markdown(results))
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "results.json", results, indent=1)
    print(f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}/ in {results['seconds']:.0f} s")
    for family, fam in results["families"].items():
        t = fam["targets"]
        if t.get("evaluated"):
            print(f"{family}: curve above peers {t['curve_above_every_peer']['met']}, "
                  f"PSNR margin at {TARGETS.at:g}x {t['psnr_margin_at']['margin_db']} dB "
                  f"(met {t['psnr_margin_at']['met']}), "
                  f"adherence ratio {t['adherence_at']['ratio']} (met {t['adherence_at']['met']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
