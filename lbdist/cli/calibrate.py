"""`lbdist calibrate`: record pairs for a prompt file and train the adapter set (resumable).

    lbdist calibrate --model tiny:wan --prompts prompts.txt --steps 20 --schedule 5 --out adapters/wan-n5

Every argument is checked before the model's weights load (`check_args`): the prompt file, seeds and held-out
count against it, training settings, the output directories, and the schedule and sizes against the model's
configs (`lbdist.generation.preflight`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_args, set_threads


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--prompts {path!r} is not a file (one prompt per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--prompts {path!r}: not readable as UTF-8 text ({err})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts {path!r} holds no prompts (one per line; '#' starts a comment)")
    return prompts


def pairs_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    return Path(args.pairs) if args.pairs else out.with_name(out.name + "-pairs")


def check_args(args: argparse.Namespace):
    """Everything calibrate can check before the model loads: (RecordConfig, TrainConfig, shape request).

    The checks that need no library come first, so most mistakes are refused before torch is imported."""
    from ..generation import preflight
    from ..generation.request import GenerationRequest
    from ..storage import check_writable_dir, is_uri

    prompts = read_prompts(args.prompts)
    if args.seeds and len(args.seeds) != len(prompts):
        raise ValueError(f"--seeds: {len(args.seeds)} seeds for {len(prompts)} prompts; give one seed per prompt")
    if args.holdout and args.holdout >= len(prompts):
        raise ValueError(f"--holdout {args.holdout}: must be smaller than the number of prompts ({len(prompts)} in "
                         f"{args.prompts!r}), so that some prompts are left to train on")
    for number, prompt in enumerate(prompts, 1):
        try:
            GenerationRequest(prompt)  # the same prompt rules as generation
        except ValueError as err:
            raise ValueError(f"--prompts {args.prompts!r}, prompt {number}: {err}") from None
    shape = GenerationRequest(prompts[0], height=args.height, width=args.width, num_frames=args.frames,
                              num_inference_steps=args.steps, guidance_scale=args.guidance, schedule=args.schedule)
    if is_uri(args.out) or (args.pairs and is_uri(args.pairs)):
        raise ValueError(f"--out {args.out!r} / --pairs {args.pairs!r}: calibration writes to local directories; "
                         "copy the adapter set to a URI or the Hub afterwards")
    check_writable_dir(args.out, "--out")
    check_writable_dir(pairs_dir(args), "--pairs")
    preflight.check_device(args.device)
    preflight.check_dtype(args.dtype)
    from ..calibrate import RecordConfig, TrainConfig

    validation = read_prompts(args.validation_prompts) if getattr(args, "validation_prompts", None) else []
    record = RecordConfig(prompts=tuple(prompts), seeds=tuple(args.seeds or ()),
                          seeds_per_prompt=getattr(args, "seeds_per_prompt", 1), validation_prompts=tuple(validation))
    train = TrainConfig(recipe=getattr(args, "recipe", "lbdist"), rank=args.rank, alpha=args.alpha, lr=args.lr, max_epochs=args.epochs,
                        holdout_prompts=args.holdout, patience=args.patience, eval_every=args.eval_every,
                        seed=args.seed)
    preflight.check_request(args.model, shape)  # sizes, frames, the schedule against the steps, before the weights
    return record, train, shape


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    record, train, shape = check_args(args)
    from ..calibrate import calibrate

    set_threads(args.device)
    from ..generation.loading import load_pipeline

    loaded = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    shape = shape.resolve(loaded.info)
    schedule, steps = shape.bridge_schedule(), shape.num_inference_steps
    call = shape.call_kwargs(loaded.info)
    call.pop("num_inference_steps")
    record = replace(record, call_kwargs=call)
    out, pairs = Path(args.out), pairs_dir(args)
    loaded.pipe.set_progress_bar_config(disable=True)
    adapters = calibrate(loaded.pipe, schedule, record, out, train, pairs_dir=pairs, restart=args.restart)
    info = adapters.extra.get("training", {}).values()
    gain = [i["loss_best"] / i["loss_uncalibrated"] for i in info if i["loss_uncalibrated"] > 0]
    print(f"wrote {out} | {len(adapters.weights)} adapters for {schedule.description} over {steps} steps | "
          f"branches {', '.join(adapters.branches)} | pairs in {pairs}"
          + (f" | watched loss / uncalibrated: median {sorted(gain)[len(gain) // 2]:.3f}" if gain else ""))
    return 0


def register(sub) -> None:
    c = sub.add_parser("calibrate", help="record bridge pairs and train one LoRA per bridge")
    add_model_args(c)
    c.add_argument("--prompts", required=True, help="text file, one calibration prompt per line (3-5)")
    c.add_argument("--seeds", type=int, nargs="*", help="one seed per prompt (default 0, 1, 2, ...)")
    c.add_argument("--recipe", default="lbdist", choices=("lbdist", "paper"),
                   help="lbdist: guided output loss on the extrapolated input (default); paper: hidden-state MSE on "
                        "the cached input (README 'Calibration recipe')")
    c.add_argument("--validation-prompts", default=None,
                   help="text file of validation prompts (not calibration, not evaluation): early stopping watches them")
    c.add_argument("--seeds-per-prompt", type=int, default=1, help="samples (seeds) per calibration prompt")
    c.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    c.add_argument("--schedule", required=True, help="N, periodic:N[:w=W][:z=Z] or steps:0,5,...")
    c.add_argument("--out", required=True, help="adapter set directory (created; a rerun resumes)")
    c.add_argument("--pairs", default=None, help="where recorded pairs go (default: <out>-pairs)")
    c.add_argument("--rank", type=int, default=32)
    c.add_argument("--alpha", type=float, default=64.0)
    c.add_argument("--lr", type=float, default=None, help="default: the family's reference rate")
    c.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the family's reference)")
    c.add_argument("--holdout", type=int, default=0,
                   help="prompts held out for early stopping, then refit on all (default 0: watch the training loss)")
    c.add_argument("--patience", type=int, default=4)
    c.add_argument("--eval-every", type=int, default=25)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--height", type=int, default=None)
    c.add_argument("--width", type=int, default=None)
    c.add_argument("--frames", type=int, default=None)
    c.add_argument("--guidance", type=float, default=None)
    c.add_argument("--restart", action="store_true",
                   help="start over in --out (a rerun with other settings is refused otherwise, listing the differences)")
    c.set_defaults(func=run)
