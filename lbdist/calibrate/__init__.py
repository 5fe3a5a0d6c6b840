"""Calibration: record bridge pairs with full-compute sampling, then train one LoRA per bridge.

    from lbdist.calibrate import RecordConfig, TrainConfig, calibrate
    adapters = calibrate(pipe, Schedule.periodic(50, 5), RecordConfig(prompts=(...)), out_dir="adapters/wan-n5")
    enable_bridge(pipe, Schedule.periodic(50, 5), adapters=adapters)

`record_pairs` and `train_adapters` are the two halves (a recording can be reused for other trainings);
`train_bridge` trains one bridge and is what a distributed job fans out; `train_joint` fits a step's guidance
branches together (the guided objective). `TrainConfig(recipe="lbdist")` (default) or `recipe="paper"`: README
"Calibration recipe".
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import RECIPES, RecordConfig, TrainConfig
from .recorder import pairs_differences, record_pairs
from .resume import SettingsChanged
from .trainer import check_resumable, load_pairs, train_adapters, train_bridge, train_joint


def calibrate(pipe, schedule, record: RecordConfig, out_dir: str | os.PathLike, train: TrainConfig = TrainConfig(),
              pairs_dir: str | os.PathLike | None = None, progress: bool = True, restart: bool = False):
    """Record pairs (into `pairs_dir`, default `<out_dir>-pairs`) and train the adapter set into `out_dir`.

    A rerun resumes both halves if their settings are unchanged, and refuses other settings listing the
    differences (`SettingsChanged`, a ValueError), before recording anything. `restart=True` starts over:
    the adapter set in `out_dir` is trained again from scratch, and the pairs are recorded again if their
    recording settings changed (identical settings record identical pairs, so those are kept).
    """
    out_dir = Path(out_dir)
    pairs_dir = Path(pairs_dir) if pairs_dir is not None else out_dir.with_name(out_dir.name + "-pairs")
    if not restart:
        check_resumable(pipe, schedule, record, out_dir, train)  # other settings: refused before recording
    redo_pairs = restart and bool(pairs_differences(pipe, schedule, record, pairs_dir))
    record_pairs(pipe, schedule, record, pairs_dir, progress=progress, restart=redo_pairs)
    return train_adapters(pipe.transformer, pairs_dir, out_dir, train, progress=progress, restart=restart)


__all__ = ["RECIPES", "RecordConfig", "SettingsChanged", "TrainConfig", "calibrate", "check_resumable", "load_pairs",
           "pairs_differences", "record_pairs", "train_adapters", "train_bridge", "train_joint"]
