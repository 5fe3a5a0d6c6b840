"""Calibration on a Ray cluster: record pairs on worker groups, train every bridge with Ray Train and DeepSpeed ZeRO.

    ray job submit --working-dir . -- python jobs/calibrate_wan.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers \\
        --prompts prompts.txt --schedule 5 --steps 50 --output s3://bucket/calib --run-id wan13b-n5 --workers 8

The job scripts are thin: `prepare` (every argument checked, one line if bad) then `run_job`. The stages:

- `pool` / `record`: the prompts spread over worker groups (`lbdist.parallel.WorkerGroup`, xfuser sequence
  parallelism inside a group for video); every pair gathered into the whole sequence and written at once, one
  shard per (bridge, prompt), indexed per prompt with sha256 (`layout`, `shards`).
- `train` / `worker`: bridges in groups that fit a worker, each group one Ray Train `TorchTrainer` whose workers
  run `deepspeed.initialize` (ZeRO-2, client AdamW: `lbdist.calibrate.zero`, the one DeepSpeed module) over a
  `RoutedBlock` (`lora`: the frozen final block shared by the group, one LoRA per bridge, every pair routed
  through its own bridge's) and a `JointFit` (`joint`: the single-process trainer's epochs and early stopping,
  data-parallel over all the group's pairs); a checkpoint per epoch window; a `FailureConfig` restarts a group
  from it after a worker dies.
- `assemble`: the adapter set in `<output>/<run_id>/adapters`, the format `Generator` loads.

Nothing here imports Ray or DeepSpeed at import time.
"""
from __future__ import annotations

from .._lazy import lazy_attribute

_NAMES = {"CalibrationJob": ".config", "prepare": ".job", "run_job": ".job"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    return lazy_attribute(__name__, _NAMES, name)
