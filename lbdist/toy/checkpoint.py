"""Checkpoints and progress records of chunked toy training, small enough to carry between GPU runs.

A GPU run lasts minutes and carries at most 64 MiB of files in and out (the tracked tree included), so a
chunk's checkpoint holds what a resume needs and no more: the VAE and transformer weights (bf16 by
default: rounding the fp32 master weights once per chunk is a 2^-9 relative change, far below one optimiser
step's), the VAE's latent statistics, step counters, and, only on request, the EMA and the AdamW moments
(each as large again; without them a resume re-initialises the EMA from the weights and re-warms the
learning rate). The text encoders are never stored: they are frozen and rebuilt from the seed.

Files, in the checkpoint directory the runs carry (`--ckpt-dir`):

    <family>.pt              torch.save of the dict described in `save_checkpoint`, written atomically
    <family>.progress.json   one record per chunk: card, commit, date, minutes, steps, steps/s, loss,
                             held-out adherence overall and per attribute, and whether the bar was met
    progress.json            all families' records merged (`chunks.merge_progress`); enough on its own to
                             resume, so a run need send back only it and the `.pt` files
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from ..io import atomic_write

FORMAT = "lbdist-toy-chunk-1"
CKPT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def checkpoint_path(ckpt_dir: str | os.PathLike, family: str) -> Path:
    return Path(ckpt_dir) / f"{family}.pt"


def progress_path(ckpt_dir: str | os.PathLike, family: str) -> Path:
    return Path(ckpt_dir) / f"{family}.progress.json"


def compact(state: dict, dtype: torch.dtype) -> dict:
    """A state dict with floating tensors cast to `dtype`, on the CPU."""
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()) for k, v in state.items()}


def compact_optimizer(state: dict, dtype: torch.dtype) -> dict:
    """An optimizer state dict with its floating per-parameter tensors cast to `dtype` (step counts kept)."""
    per_param = {i: {k: (v.to("cpu", dtype) if torch.is_tensor(v) and v.is_floating_point() and v.ndim else v)
                     for k, v in s.items()} for i, s in state["state"].items()}
    return {"state": per_param, "param_groups": state["param_groups"]}


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` atomically. Keys: format, family, size, data (DataConfig as a dict), seed, vae_done,
    vae (state dict), vae_steps, vae_elapsed, latent_stats, transformer (state dict or None), steps, chunks,
    and optionally ema (list of tensors), opt / vae_opt (optimizer state dicts)."""
    payload = {"format": FORMAT, **payload}
    path = atomic_write(path, lambda tmp: torch.save(payload, tmp))
    os.chmod(path, 0o644)
    return path


def load_checkpoint(path: str | os.PathLike, expect: dict) -> dict | None:
    """The checkpoint at `path`, or None if there is none. Raises ValueError when it was written for another
    run (any key of `expect`, e.g. family, size, data, differs), naming the key and both values."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: format {state.get('format')!r}, expected {FORMAT!r}")
    for key, value in expect.items():
        if state.get(key) != value:
            raise ValueError(f"{path} was written with {key}={state.get(key)!r}, this run has {key}={value!r}; "
                             f"use another --ckpt-dir or the same settings")
    return state


def load_progress(ckpt_dir: str | os.PathLike, family: str) -> dict:
    """The family's progress: `<family>.progress.json`, else its entry of the merged `progress.json` (what a
    GPU run sends back and the next one carries), else an empty record."""
    path, merged = progress_path(ckpt_dir, family), Path(ckpt_dir) / "progress.json"
    if path.is_file():
        return json.loads(path.read_text())
    if merged.is_file() and family in (entries := json.loads(merged.read_text())):
        return entries[family]
    return {"family": family, "done": False, "chunks": []}


def append_progress(ckpt_dir: str | os.PathLike, family: str, record: dict, done: bool, meta: dict) -> dict:
    """Add one chunk's record to `<family>.progress.json` (atomically) and return the whole file's content."""
    progress = load_progress(ckpt_dir, family)
    progress.update(meta)
    progress["chunks"].append(record)
    progress["done"] = bool(done)
    text = json.dumps(progress, indent=1, default=str) + "\n"
    os.chmod(atomic_write(progress_path(ckpt_dir, family), lambda tmp: Path(tmp).write_text(text)), 0o644)
    return progress


def run_facts(device: torch.device) -> dict:
    """Card, commit and date of this run (the commit from `LBDIST_COMMIT`, else git, else "unknown")."""
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    commit = os.environ.get("LBDIST_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    return {"card": card, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
