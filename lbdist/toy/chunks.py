"""Train the toys of all three families in one run, as resumable chunks: the command a GPU run executes.

    python -m lbdist.toy.chunks --minutes 8 --ckpt-dir ckpt --out toys               # GPU run: one chunk
    python -m lbdist.toy.chunks --quick --device cpu --ckpt-dir /tmp/c --out /tmp/t  # seconds, CPU (tests)

Each family not yet done (`<ckpt-dir>/<family>.progress.json`) gets one process (`--worker`, running
`chunk_train.train_chunk`); with G GPUs, family i runs on GPU i mod G (one family per GPU on three or more,
all sharing one GPU on a one-GPU machine). Each process has the whole `--minutes` budget, start-up to
export, and writes `<ckpt-dir>/<family>.pt`, `<family>.progress.json` and `<family>.log`; at the end this
process merges the records into `<ckpt-dir>/progress.json` and prints each family's last record. Run the
same command again, with the checkpoint directory carried over, to continue where the last chunk stopped;
a family stops once its held-out adherence is >= 0.9 with every attribute >= 0.8. On the CPU the families
run one after another in this process. The exit status is 0 when every family's chunk ran.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .build import FAMILIES
from .checkpoint import load_progress
from .chunk_train import COMPILE_CHOICES, ChunkConfig, train_chunk
from .cuda_guard import SDPA_CHOICES
from .dataset import DataConfig

QUICK_DATA_V2 = DataConfig(version="v2", height=32, width=32, num_frames=5, speed=(1.0, 1.5), jitter=2.0,
                           radius=(4.0, 5.0), small=(3.25, 3.6), large=(4.75, 5.5), bounce=(6.0, 8.0))
QUICK = dict(size="tiny", data=QUICK_DATA_V2, minutes=3.0, reserve_minutes=1.0, batch=4, bank=8, refresh=4,
             refresh_every=2, vae_batch=2, vae_bank=8, max_vae_steps=2, max_steps=3, vae_check_every=1,
             vae_check_samples=2, warmup=1, eval_prompts=2, eval_train_prompts=1, eval_steps=2, log_every=1,
             ckpt_every_s=0.0)
OPTIONS = {  # flag -> (ChunkConfig field, type)
    "--batch": ("batch", int), "--lr": ("lr", float), "--bank": ("bank", int), "--refresh": ("refresh", int),
    "--refresh-every": ("refresh_every", int), "--vae-minutes": ("vae_minutes", float),
    "--vae-batch": ("vae_batch", int), "--eval-prompts": ("eval_prompts", int), "--eval-seeds": ("eval_seeds", int),
    "--eval-steps": ("eval_steps", int), "--max-steps": ("max_steps", int), "--max-vae-steps": ("max_vae_steps", int),
    "--log-every": ("log_every", int), "--ckpt-every": ("ckpt_every_s", float),
    "--reserve-minutes": ("reserve_minutes", float), "--ckpt-dtype": ("ckpt_dtype", str),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt-dir", required=True, help="checkpoints and progress (carry it between runs)")
    p.add_argument("--out", default=None, help="export directory of the trained pipelines (default: none)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--minutes", type=float, default=None, help="budget of every family's process (default 8)")
    p.add_argument("--size", default="deep", help='transformer size in build.py (default "deep")')
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", default="off", choices=COMPILE_CHOICES, help="torch.compile of the transformer")
    p.add_argument("--sdpa", default="auto", choices=SDPA_CHOICES, help="attention backends of training steps")
    p.add_argument("--ckpt-ema", action="store_true", help="also store the EMA (checkpoint x2)")
    p.add_argument("--ckpt-optimizer", action="store_true", help="also store AdamW moments (checkpoint x3)")
    p.add_argument("--quick", action="store_true", help="tiny models, 32x32 scenes, a few steps (tests)")
    p.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    for flag, (_, kind) in OPTIONS.items():
        p.add_argument(flag, type=kind, default=None)
    return p.parse_args(argv)


def config_for(args: argparse.Namespace, family: str, device: str) -> ChunkConfig:
    """The `ChunkConfig` of one family from the command line (`--quick` first, explicit flags on top)."""
    base = dict(QUICK) if args.quick else {"size": args.size}
    base["minutes"] = args.minutes or base.get("minutes", 8.0)
    flags = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in OPTIONS.items()}
    base.update({k: v for k, v in flags.items() if v is not None})
    return replace(ChunkConfig(family=family, ckpt_dir=args.ckpt_dir), **base, out=args.out, device=device,
                   seed=args.seed, compile=args.compile, sdpa=args.sdpa, ckpt_ema=args.ckpt_ema,
                   ckpt_optimizer=args.ckpt_optimizer)


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v.strip()] if visible else None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (ids or [str(i) for i in range(count)])[:count]


def _spawn(argv: list[str], families: list[str], ckpt_dir: Path, minutes: float) -> dict[str, int]:
    """One worker process per family, family i on GPU i mod G; waits for all; returns exit codes."""
    gpus, procs = _gpu_ids(), {}
    root = str(Path(__file__).resolve().parents[2])  # the workers import this same lbdist
    path = os.pathsep.join([root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    for i, family in enumerate(families):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        log = open(ckpt_dir / f"{family}.log", "a")
        procs[family] = (subprocess.Popen([sys.executable, "-m", "lbdist.toy.chunks", *argv, "--worker", family],
                                          stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print(f"{family}: GPU {gpus[i % len(gpus)]}, log {ckpt_dir / f'{family}.log'}", flush=True)
    deadline, codes = time.time() + minutes * 60.0 + 120.0, {}
    for family, (proc, log) in procs.items():
        try:
            codes[family] = proc.wait(timeout=max(deadline - time.time(), 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[family] = proc.wait()
        log.close()
    return codes


def merge_progress(ckpt_dir: Path, families) -> dict:
    """The progress of `families` and of every other family with a record, in `<ckpt-dir>/progress.json`."""
    known = [f for f in FAMILIES if f in families or (ckpt_dir / f"{f}.progress.json").is_file()]
    merged = {family: load_progress(ckpt_dir, family) for family in known}
    (ckpt_dir / "progress.json").write_text(json.dumps(merged, indent=1, default=str) + "\n")
    return merged


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        train_chunk(config_for(args, args.worker, device))
        return 0
    for family in args.families:
        config_for(args, family, device)  # every family's settings are valid before anything starts
    todo = [f for f in args.families if not load_progress(ckpt_dir, f).get("done")]
    print(f"families to train: {todo or 'none (all done)'}; device {device}", flush=True)
    if device.startswith("cuda") and todo:
        codes = _spawn(argv, todo, ckpt_dir, config_for(args, todo[0], device).minutes)
    else:
        codes = {}
        for family in todo:
            train_chunk(config_for(args, family, device))
            codes[family] = 0
    merged = merge_progress(ckpt_dir, args.families)
    for family in args.families:
        last = merged[family]["chunks"][-1] if merged[family]["chunks"] else {}
        keys = ("chunk", "steps", "steps_per_s", "loss", "heldout_adherence", "heldout_per_attribute", "met")
        print(f"{family}: exit {codes.get(family, '-')}, done {merged[family]['done']}, "
              f"last chunk {json.dumps({k: last.get(k) for k in keys})}", flush=True)
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
