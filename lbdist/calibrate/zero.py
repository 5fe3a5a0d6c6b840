"""The one module of lbdist that imports DeepSpeed: a ZeRO-2 engine over a group of bridges' LoRA weights.

    engine = zero_engine(routed, groups, ZeroSettings(lr=1e-4, grad_clip=1.0, bf16=False))
    engine.backward(loss); ...; engine.step()       # one optimiser step = one epoch of every active bridge
    save_state(engine, directory); load_state(engine, directory)

The client optimiser is `BridgeAdamW`, a `torch.optim.AdamW` (DeepSpeed is told to accept it with
`zero_allow_untested_optimizer`) whose parameter groups are bridges. ZeRO-2 shards each group's gradient and
optimiser state over the data-parallel ranks; `BridgeAdamW` clips each bridge's gradient to its own norm
(the squared norm of each rank's shard, all-reduced), as the single-process trainer clips each bridge, and
skips groups marked `frozen` (bridges that stopped early), so their weights stay exactly as they were.
DeepSpeed's own global clipping is off. Gradient accumulation is unmanaged (`backward` any number of times,
then `step`), since each epoch's count of pairs per rank changes as bridges stop. bf16 on GPU (fp32 master
weights and optimiser state in the shards), fp32 on the CPU (`DS_ACCELERATOR=cpu`, gloo).

Checkpoints hold only the LoRA weights and their optimiser shards (`exclude_frozen_parameters`): the frozen
block is never written. They load back into an engine over the same bridges and the same number of ranks.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch

INSTALL_HINT = "pip install 'lbdist[train]'"
TAG = "state"


@dataclass(frozen=True)
class ZeroSettings:
    """How the engine trains.

    lr: AdamW learning rate of every bridge (the family's recipe rate, resolved by the caller).
    weight_decay: AdamW weight decay.
    grad_clip: max gradient norm per bridge (reference 1.0).
    bf16: bf16 weights and activations with fp32 master weights (GPU); False keeps fp32 (CPU).
    stage: ZeRO stage (2: optimiser state and gradients sharded; 1: optimiser state only; 0: none). The
        benchmark compares 0 and 2 for peak memory.
    """

    lr: float
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    bf16: bool = False
    stage: int = 2

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip!r}")
        if self.stage not in (0, 1, 2):
            raise ValueError(f"stage must be 0, 1 or 2, got {self.stage!r}")


def load_deepspeed():
    """Import DeepSpeed (on a machine without CUDA, with its CPU accelerator); a missing install names the extra."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _same_ninja()
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError(f"distributed calibration needs DeepSpeed ({exc}): {INSTALL_HINT}") from exc
    return deepspeed


def _same_ninja() -> None:
    """Put this interpreter's bin directory first on PATH when it holds a `ninja`. DeepSpeed JIT-builds its ops
    (on the CPU, the shared-memory allreduce) with whichever ninja PATH finds; a driver and Ray workers that
    find different ninja releases (pip's in the venv, the system's) read each other's build log as a changed
    command line and rebuild the op in every process (1-3 minutes on two cores each time)."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(bindir, "ninja")) and path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")


def ds_config(settings: ZeroSettings) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0,  # BridgeAdamW clips each bridge
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": settings.stage, "contiguous_gradients": True, "overlap_comm": False},
        "bf16": {"enabled": bool(settings.bf16)},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class BridgeAdamW(torch.optim.AdamW):
    """AdamW with one parameter group per bridge: per-bridge gradient clipping, frozen groups skipped.

    `sharded`: the gradients this optimiser sees are shards of the whole (ZeRO), so a group's squared norm is
    all-reduced over the default process group before clipping. DeepSpeed's ZeRO optimiser calls `step` with
    one group at a time; the clipping works on whatever groups a call holds.
    """

    def __init__(self, groups: list[dict], lr: float, weight_decay: float, max_norm: float, sharded: bool):
        super().__init__(groups, lr=lr, weight_decay=weight_decay)
        self.max_norm, self.sharded = float(max_norm), sharded

    @torch.no_grad()
    def step(self, closure=None):
        groups = self.param_groups
        squares = torch.stack([sum((p.grad.detach().float().pow(2).sum() for p in g["params"] if p.grad is not None),
                                   torch.zeros(())) for g in groups]).double()
        if self.sharded and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            device = next((p.device for g in groups for p in g["params"]), torch.device("cpu"))
            squares = squares.to(device)
            torch.distributed.all_reduce(squares)
        active = []
        for group, square in zip(groups, squares.tolist()):
            if group.get("frozen"):
                continue
            coef = min(1.0, self.max_norm / (math.sqrt(square) + 1e-6))
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(coef)
            active.append(group)
        if not active:
            return None
        self.param_groups = active
        try:
            return super().step(closure)
        finally:
            self.param_groups = groups


def zero_engine(module: torch.nn.Module, groups: list[list[torch.nn.Parameter]], settings: ZeroSettings):
    """A DeepSpeed engine over `module` whose trainable parameters are `groups` (one list per bridge).

    The torch.distributed group must exist (Ray Train's `TorchTrainer` forms it; tests form one with gloo).
    """
    deepspeed = load_deepspeed()
    os.environ.setdefault("LOCAL_RANK", "0")  # one device per process (Ray gives each worker its own GPU as cuda:0)
    for params in groups:
        for p in params:
            p.requires_grad_(True)
    optimizer = BridgeAdamW([{"params": list(ps), "bridge": i} for i, ps in enumerate(groups)], lr=settings.lr,
                            weight_decay=settings.weight_decay, max_norm=settings.grad_clip,
                            sharded=settings.stage >= 1)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config(settings),
                                           dist_init_required=False)
    return engine


def client_optimizer(engine) -> BridgeAdamW:
    opt = engine.optimizer
    while not isinstance(opt, BridgeAdamW):
        opt = opt.optimizer
    return opt


def freeze_groups(engine, indices) -> None:
    """Skip these bridges' groups in every later optimiser step (their weights stay as they are)."""
    groups = client_optimizer(engine).param_groups
    for i in indices:
        groups[i]["frozen"] = True


def full_fp32(engine, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The fp32 master value of each parameter, gathered from the ZeRO shards (collective: call on every rank)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = []
    for p in params:
        value = safe_get_full_fp32_param(p) if engine.zero_optimization_stage() >= 1 else None
        out.append((value if value is not None else p).detach().to("cpu", torch.float32).clone())
    return out


def save_state(engine, directory: str | os.PathLike) -> None:
    """Write this rank's part of the engine state (LoRA weights, optimiser shard) under `directory`."""
    engine.save_checkpoint(str(directory), tag=TAG, save_latest=False, exclude_frozen_parameters=True)


def load_state(engine, directory: str | os.PathLike) -> None:
    """Load what `save_state` wrote (every rank's files must be under `directory`)."""
    path, _ = engine.load_checkpoint(str(directory), tag=TAG, load_module_strict=False, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise ValueError(f"no DeepSpeed state (tag {TAG!r}) under {directory}")


def destroy() -> None:
    """Tear the process group down (without it some gloo runs abort at exit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
