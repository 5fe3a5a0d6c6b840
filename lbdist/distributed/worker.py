"""The training function every Ray Train worker runs (`TorchTrainer(train_loop, ...)`): one group of bridges.

    load the frozen final block -> load this rank's share of the group's pairs (sha256-checked) -> a RoutedBlock
    with every bridge's initial LoRA -> deepspeed.initialize (ZeRO-2, client AdamW; lbdist.calibrate.zero) ->
    resume from Ray Train's latest checkpoint if there is one -> JointFit.run

After every epoch rank 0 writes the bridges that finished to `<run>/bridges/` (their adapter file and info)
and reports progress to the board; every `window` epochs (and when stopping or done) all ranks write a
checkpoint: each rank's DeepSpeed state (LoRA weights and its optimiser shard, never the frozen block) plus, from
rank 0, the loop's state and every bridge's best weights, reported to Ray Train, which merges the ranks' files
into one checkpoint. After a worker dies Ray Train restarts the group and every rank resumes from it.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

from .. import storage
from .layout import RunLayout
from .shards import decode_pair, sha256

JOINT_STATE = "joint.json"
BEST = "best.safetensors"


def _load_pairs(layout: RunLayout, items: list[dict], device, index: dict, pad: bool = False) -> list:
    from .joint import LocalPair

    out = []
    for item in items:
        data = storage.read_bytes(layout.path(item["file"]))
        if sha256(data) != item["sha256"]:
            raise ValueError(f"shard {item['file']} of {layout.root} is corrupted (sha256 mismatch): resubmit the job "
                             "to record its prompt again")
        out.append(LocalPair(index[(item["step"], item["branch"])], decode_pair(data, device), item["held"], pad))
    return out


def _neighbour(layout: RunLayout, key: tuple[int, str]) -> dict | None:
    """The trained LoRA of the bridge one step before `key` (same branch), if it finished (warm start)."""
    from safetensors.torch import load as load_bytes

    path = layout.bridge_file(key[0] - 1, key[1], "safetensors")
    return load_bytes(storage.read_bytes(path)) if storage.exists(path) else None


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _setup(config: dict, rank: int, world: int):
    """Block, pairs, routed LoRA, engine and loop of this rank (fresh, before any checkpoint is loaded)."""
    from ..calibrate.trainer import bridge_seed
    from ..calibrate.zero import ZeroSettings, zero_engine
    from .block import load_final_block
    from .joint import BridgePlan, JointFit, assign_pairs
    from .lora import RoutedBlock, initial_state

    job, layout, bridges = config["job"], RunLayout(config["root"]), [tuple(b) for b in config["bridges"]]
    cfg, device = job.resolved_train(), _device()
    bf16 = device.type == "cuda"
    block, spec = load_final_block(job.model, device, torch.bfloat16 if bf16 else torch.float32)
    index = {b: i for i, b in enumerate(bridges)}
    items = sorted((e for e in config["pairs"] if (e["step"], e["branch"]) in index),
                   key=lambda e: (e["prompt"], e["step"], e["branch"]))
    mine = [items[k] for k in assign_pairs(items, world)[rank]]
    pairs = _load_pairs(layout, mine, device, index) or _load_pairs(layout, items[:1], device, index, pad=True)
    plans = []
    for (step, branch) in bridges:
        of = [e for e in items if (e["step"], e["branch"]) == (step, branch)]
        held = sum(1 for e in of if e["held"])
        plans.append(BridgePlan((step, branch), bridge_seed(cfg.seed, step, branch), len(of) - held, held,
                                cfg.max_epochs))
    inits = [_neighbour(layout, p.key) if config.get("warm") else None for p in plans]
    inits = [init or initial_state(block, cfg, spec.lora_targets, p.seed) for init, p in zip(inits, plans)]
    routed = RoutedBlock(block, spec.lora_targets, bridges, cfg.rank, cfg.alpha, inits).to(device)
    engine = zero_engine(routed, [routed.bridge_parameters(i) for i in range(len(bridges))],
                         ZeroSettings(lr=cfg.lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, bf16=bf16))
    return JointFit(routed, engine, spec, cfg, plans, pairs), layout


def _restore(fit, checkpoint) -> None:
    from safetensors.torch import load_file

    from ..calibrate.zero import load_state

    with checkpoint.as_directory() as directory:
        load_state(fit.engine, directory)
        state = json.loads(open(os.path.join(directory, JOINT_STATE)).read())
        best = load_file(os.path.join(directory, BEST))
    fit.load_state_dict(state, {int(k): v.to(fit.device) for k, v in best.items()})


def _checkpoint(fit, rank: int, metrics: dict) -> None:
    import ray.train
    from safetensors.torch import save_file

    from ..calibrate.zero import save_state

    with tempfile.TemporaryDirectory() as directory:
        save_state(fit.engine, directory)
        if rank == 0:
            with open(os.path.join(directory, JOINT_STATE), "w") as f:
                json.dump(fit.state_dict(), f)
            save_file({str(i): t.detach().cpu().contiguous() for i, t in fit.best.items()},
                      os.path.join(directory, BEST))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def write_finished(fit, layout: RunLayout, indices: list[int], settings: dict) -> None:
    """Each finished bridge's adapter file and info, as soon as it finished (rank 0)."""
    from safetensors.torch import save as safetensors_bytes

    from .layout import write_json

    for i in indices:
        state, info = fit.result(i)
        step, branch = fit.plans[i].key
        storage.write_bytes(layout.bridge_file(step, branch, "safetensors"), safetensors_bytes(state))
        write_json(layout.bridge_file(step, branch, "json"), {**info, "settings": settings})


def train_loop(config: dict) -> None:
    """Ray Train's `train_loop_per_worker` for one group of bridges (see the module docstring)."""
    import ray.train

    from .progress import StopPoller

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(config.get("threads", 1))))
    fit, layout = _setup(config, rank, world)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        _restore(fit, checkpoint)
    resumed = fit.epoch
    written = {i for i, p in enumerate(fit.progress) if p.done}
    board, group, window = config.get("board"), config["group"], config["window"]
    poll = StopPoller(board, rank, world, fit.device)

    def on_epoch(fit, finished):
        if rank == 0:
            write_finished(fit, layout, [i for i in finished if i not in written], config["settings"])
            written.update(finished)
            if board is not None:
                board.report.remote(group, {**_progress(fit), "resumed_from": resumed})
        if fit.epoch % window == 0 or not fit.active():
            _checkpoint(fit, rank, {"epoch": fit.epoch, "done": sum(p.done for p in fit.progress)})

    if not fit.run(poll, on_epoch):
        _checkpoint(fit, rank, {"epoch": fit.epoch, "done": sum(p.done for p in fit.progress), "stopped": 1})
        if rank == 0 and board is not None:
            board.report.remote(group, {**_progress(fit), "resumed_from": resumed, "stopped": True})


def _progress(fit) -> dict:
    active = fit.active()
    return {"epoch": fit.epoch, "done": len(fit.plans) - len(active), "total": len(fit.plans),
            "max_epochs": max((fit.plans[i].max_epochs for i in active), default=fit.epoch),
            "seconds_per_epoch": fit.seconds / max(1, fit.epoch), "pid": os.getpid()}
