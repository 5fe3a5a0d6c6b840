"""Training on the pool: every bridge's LoRA with Ray Train (`TorchTrainer`) and DeepSpeed ZeRO-2.

The recorded bridges are split into groups that fit a worker's memory (`plan_groups`, kept in `train/plan.json`
so a resubmitted run trains the same groups); each group is one `TorchTrainer` of `train_workers` workers
running `lbdist.distributed.worker.train_loop`, with a `FailureConfig` (a dead worker restarts the group from its
last checkpoint) and its checkpoints under `<run>/train/group<k>`. Groups whose bridges are all finished are
skipped; as many trainers run at once as the cluster has workers for. The driver prints each trainer's progress
from the board (bridges done / total, epoch, ETA) and, on SIGTERM, asks every trainer to checkpoint and return.
"""
from __future__ import annotations

import math
import threading
import time

from .. import storage
from .layout import RunLayout, list_names, read_json, write_json
from .progress import first_line, fmt_seconds, new_board


def memory_estimate(description: dict, pair_bytes: dict, workers: int, rank: int, bf16: bool) -> tuple[float, dict]:
    """(bytes every worker needs whatever the group, bytes per bridge of a group) on one training worker.

    Fixed: the frozen block, plus activations of one pair (about 16x its shard, a rough bound for one block's
    forward and backward). Per bridge: its LoRA weights, their stacked copy and gradient (2 bytes each in bf16,
    4 in fp32), the fp32 master copy and AdamW moments sharded by ZeRO-2 (12 bytes / workers), and its pairs
    divided over the workers.
    """
    numel = description["lora_numel_per_rank"] * rank
    width = 2 if bf16 else 4
    largest = max(pair_bytes.values(), default=0) / max(1, description.get("prompts", 1))
    fixed = description["block_bytes"] + 16 * largest
    per_bridge = {b: numel * (3 * width + 12 / workers) + total / workers for b, total in pair_bytes.items()}
    return fixed, per_bridge


def plan_groups(bridges: list, per_bridge: dict, fixed: float, budget: float | None, limit: int | None) -> list[list]:
    """Consecutive bridges in groups of equal size, each fitting `budget` bytes (None: no memory limit) and at
    most `limit` bridges; ValueError if one bridge alone does not fit."""
    if not bridges:
        return []
    cap = len(bridges) if limit is None else limit
    if budget is not None:
        worst = max(per_bridge.values())
        fits = int((budget - fixed) // worst) if budget > fixed else 0
        if fits < 1:
            raise ValueError(f"one bridge needs about {(fixed + worst) / 2**30:.1f} GB on a training worker, more than "
                             f"memory_gb={budget / 2**30:.1f}: use more training workers or GPUs with more memory")
        cap = min(cap, fits)
    count = math.ceil(len(bridges) / cap)
    size = math.ceil(len(bridges) / count)
    return [bridges[i:i + size] for i in range(0, len(bridges), size)]


def _waves(bridges: list, schedule) -> list[list]:
    """Bridges grouped by their offset from the anchor (1, 2, ...): a wave only needs the waves before it."""
    offsets = sorted({schedule.plan(s).offset for s, _ in bridges})
    return [[b for b in bridges if schedule.plan(b[0]).offset == k] for k in offsets]


def _batches(todo: dict, job) -> list[list[int]]:
    """Groups of the same wave (same offset) together, waves in order."""
    schedule = job.parsed_schedule()
    by_offset: dict[int, list[int]] = {}
    for k, group in sorted(todo.items()):
        by_offset.setdefault(schedule.plan(group[0][0]).offset, []).append(k)
    return [by_offset[o] for o in sorted(by_offset)]


def finished_bridges(layout: RunLayout) -> set[tuple[int, str]]:
    out = set()
    for name in list_names(layout.path("bridges"), ".json"):
        stem = name[: -len(".json")]
        if storage.exists(layout.path("bridges", stem + ".safetensors")):
            step, branch = stem[len("step"):].split("_", 1)
            out.add((int(step), branch))
    return out


def _trainer(job, layout: RunLayout, k: int, group: list, pairs: list, board, settings: dict, use_gpu: bool):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .worker import train_loop

    workers = job.train_workers or job.workers
    config = {"job": job, "root": layout.root, "bridges": [list(b) for b in group], "pairs": pairs, "board": board,
              "group": k, "window": job.window, "settings": settings, "threads": job.cpus_per_worker,
              "warm": job.warm_start}
    return TorchTrainer(
        train_loop, train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": job.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=f"group{k:02d}", storage_path=_storage_path(layout),
                             failure_config=FailureConfig(max_failures=job.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))


def _storage_path(layout: RunLayout) -> str:
    path = layout.train
    return str(storage.local_path(path)) if storage.is_local(path) else path


def _pairs_for_training(job, entries: dict[int, list[dict]]) -> list[dict]:
    held = set(sorted(entries)[len(entries) - job.train.holdout_prompts:]) if job.train.holdout_prompts else set()
    return [{**e, "held": e["prompt"] in held} for p in sorted(entries) for e in entries[p]]


def _run_trainers(trainers: dict, concurrent: int, errors: dict) -> list[threading.Thread]:
    """Start the trainers' `fit()` in threads, at most `concurrent` at once; returns the threads."""
    gate = threading.Semaphore(concurrent)

    def fit(k, trainer):
        with gate:
            try:
                trainer.fit()
            except Exception as exc:  # reported by the driver as one line
                errors[k] = exc

    threads = [threading.Thread(target=fit, args=(k, t), daemon=True, name=f"trainer-{k}") for k, t in trainers.items()]
    for t in threads:
        t.start()
    return threads


def _train_line(snapshot: dict, finished_before: int, total: int, waiting: int) -> str:
    """bridges done / total, each running group's epoch, and an upper bound of the time left."""
    done = finished_before + sum(v.get("done", 0) for v in snapshot.values())
    running = {k: v for k, v in sorted(snapshot.items()) if v.get("done", 0) < v.get("total", 1)}
    epochs = ", ".join(f"group {k} epoch {v['epoch']}/{v['max_epochs']} ({v['seconds_per_epoch']:.2f} s/epoch)"
                       for k, v in running.items()) or ("starting the next group" if waiting else "finishing")
    eta = max(((v["max_epochs"] - v["epoch"]) * v["seconds_per_epoch"] for v in running.values()), default=0.0)
    return (f"bridges {done}/{total} done | {epochs} | ETA <= {fmt_seconds(eta)}"
            + (f" + {waiting} group(s) waiting" if waiting else "") + " (early stopping ends bridges sooner)")


class _Reporter:
    """Turns board snapshots into progress lines: on a group's start or resume, when bridges finish, and at
    least every `every` seconds while training runs (a long run prints a line per `every`, not per epoch)."""

    def __init__(self, progress, groups: int, finished_before: int, total: int, every: float = 30.0):
        self.progress, self.groups, self.before, self.total, self.every = progress, groups, finished_before, total, every
        self.resumed, self.started, self.last_done, self.last_time = {}, set(), -1, 0.0

    def __call__(self, snapshot: dict) -> None:
        for k, values in sorted(snapshot.items()):
            if values.get("resumed_from") and self.resumed.get(k) != values["resumed_from"]:
                self.resumed[k] = values["resumed_from"]
                self.progress.line("train", f"group {k} resumed from its checkpoint at epoch {values['resumed_from']}")
        done = sum(v.get("done", 0) for v in snapshot.values())
        fresh = set(snapshot) - self.started
        if snapshot and (fresh or done != self.last_done or time.monotonic() - self.last_time >= self.every):
            self.started |= fresh
            self.last_done, self.last_time = done, time.monotonic()
            waiting = self.groups - len(self.started)
            self.progress.line("train", _train_line(snapshot, self.before, self.total, waiting))


def train_all(job, layout: RunLayout, description: dict, entries: dict, progress, stop, use_gpu: bool) -> dict:
    """Train every bridge not yet finished; returns counts. Raises on a trainer's failure."""
    import ray

    from ..calibrate.resume import training_settings

    pairs = _pairs_for_training(job, entries)
    bridges = sorted({(e["step"], e["branch"]) for e in pairs})
    before = finished_bridges(layout)
    plan = read_json(layout.path("train", "plan.json"))
    if plan is None:
        sizes = {b: sum(e["bytes"] for e in pairs if (e["step"], e["branch"]) == b) for b in bridges}
        workers = job.train_workers or job.workers
        fixed, per_bridge = memory_estimate({**description, "prompts": len(entries)}, sizes, workers,
                                            job.train.rank, use_gpu)
        budget = job.memory_gb * 2**30 if job.memory_gb else (70 * 2**30 if use_gpu else None)
        waves = _waves(bridges, job.parsed_schedule()) if job.warm_start else [bridges]
        plan = {"groups": [[list(b) for b in g] for wave in waves
                           for g in plan_groups(wave, per_bridge, fixed, budget, job.max_bridges_per_trainer)],
                "warm_start": job.warm_start}
        write_json(layout.path("train", "plan.json"), plan)
    groups = {k: [tuple(b) for b in g] for k, g in enumerate(plan["groups"])}
    todo = {k: g for k, g in groups.items() if not set(g) <= before}
    progress.line("train", f"{len(bridges)} bridges in {len(groups)} group(s) | {len(before)} finished before "
                           f"(skipped) | {len(todo)} trainer(s) of {job.train_workers or job.workers} workers, "
                           f"ZeRO-2, {'bf16' if use_gpu else 'fp32'}")
    if not todo:
        return {"trained": 0, "skipped": len(before), "total": len(bridges)}
    board = new_board()
    stop.attach(board)
    settings = training_settings(job.resolved_train(), _recording_keys(job, description))
    trainers = {k: _trainer(job, layout, k, g, pairs, board, settings, use_gpu) for k, g in todo.items()}
    concurrent = job.max_concurrent_trainers or max(1, _cluster_workers(ray, use_gpu, job) //
                                                    (job.train_workers or job.workers))
    errors: dict = {}
    finished_before = len(before - {b for g in todo.values() for b in g})
    report = _Reporter(progress, len(todo), finished_before, len(bridges))
    # with warm start a group needs the groups of the wave before it: run the waves one after the other
    batches = _batches(todo, job) if job.warm_start else [list(todo)]
    for batch in batches:
        threads = _run_trainers({k: trainers[k] for k in batch}, concurrent, errors)
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            report(ray.get(board.snapshot.remote())[1])
        if errors or stop():
            break
    report(ray.get(board.snapshot.remote())[1])
    if errors:
        k, exc = sorted(errors.items())[0]
        raise RuntimeError(f"training group {k} failed: {first_line(exc)}") from exc
    after = finished_bridges(layout)
    return {"trained": len(after - before), "skipped": len(before), "total": len(bridges),
            "complete": set(bridges) <= after}


def _recording_keys(job, description: dict) -> dict:
    # one seed per prompt and no validation split: what a single-process recording of the same prompts holds
    return {"prompts": list(job.prompts), "seeds": list(job.seeds), "call_kwargs": description["call_kwargs"],
            "seeds_per_prompt": 1, "validation_prompts": [], "validation_seeds": []}


def _cluster_workers(ray, use_gpu: bool, job) -> int:
    resources = ray.cluster_resources()
    return int(resources.get("GPU", 0)) if use_gpu else int(resources.get("CPU", 1) // job.cpus_per_worker)
