"""`apply_sequence_parallel(pipe, *, config)`: xfuser's Ulysses / ring sequence parallelism in any launcher.

Outside Ray (torchrun, SLURM, a notebook with one process per GPU), each process calls

    from lbdist import SequenceParallelConfig, apply_sequence_parallel, apply_bridge
    apply_sequence_parallel(pipe, config=SequenceParallelConfig(ulysses_degree=4))  # joins the group (env://)
    apply_bridge(pipe, config=...)                                                 # after SP: hooks on the wrapper
    frames = pipe(prompt=..., generator=torch.Generator().manual_seed(0)).frames  # same seed on every rank

With `cfg_degree=2` the world is two halves of `ulysses * ring` ranks each; add CFG-parallel and the split VAE
after the bridge, in this order (`compile_blocks`, if wanted, goes right after this call, before the bridge):

    apply_sequence_parallel(pipe, config=SequenceParallelConfig(cfg_degree=2, ulysses_degree=2))  # 4 ranks
    apply_bridge(pipe, config=...)
    apply_cfg_parallel(pipe, config=CFGParallelConfig(degree=2, sp=2))   # lbdist.parallel.cfg
    apply_parallel_vae(pipe)                                             # lbdist.parallel.vae

and `remove_sequence_parallel(pipe)` puts the original transformer back and leaves the process group. Worker
groups (`lbdist.parallel.WorkerGroup`, `Generator(sp_degree=N)`) do the same inside Ray actors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import degree, xdit

_ORIGINAL = "_lbdist_sp_original"


@dataclass(frozen=True)
class SequenceParallelConfig:
    """How one process joins a sequence-parallel group.

    ulysses_degree: Ulysses (all-to-all over heads) degree; None: world_size // (cfg_degree * ring_degree).
    ring_degree: ring-attention degree; cfg * ulysses * ring must equal the world size.
    cfg_degree: 1, or 2 for two halves that will run one guidance branch each (`apply_cfg_parallel`).
    backend: "nccl", "gloo" or "auto" (nccl with CUDA, else gloo).
    init_method: torch.distributed rendezvous; "env://" reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun).
    """

    ulysses_degree: int | None = None
    ring_degree: int = 1
    backend: str = "auto"
    init_method: str = "env://"
    cfg_degree: int = 1

    def __post_init__(self):
        if self.ulysses_degree is not None and (type(self.ulysses_degree) is not int or self.ulysses_degree < 1):
            raise ValueError(f"ulysses_degree must be an integer >= 1 or None, got {self.ulysses_degree!r}")
        if type(self.ring_degree) is not int or self.ring_degree < 1:
            raise ValueError(f"ring_degree must be an integer >= 1, got {self.ring_degree!r}")
        if self.cfg_degree not in (1, 2) or type(self.cfg_degree) is not int:
            raise ValueError(f"cfg_degree must be 1 or 2, got {self.cfg_degree!r}")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {self.backend!r}")

    def degrees(self, world_size: int) -> tuple[int, int]:
        """(ulysses, ring) for `world_size` ranks; raises with the arithmetic if the degrees do not fit."""
        split = self.ring_degree * self.cfg_degree
        ulysses = self.ulysses_degree if self.ulysses_degree is not None else max(1, world_size // split)
        if ulysses * split != world_size:
            raise ValueError(f"cfg({self.cfg_degree}) * ulysses({ulysses}) * ring({self.ring_degree}) = "
                             f"{ulysses * split} != world_size({world_size}): the degrees must multiply to the world "
                             "size")
        return ulysses, self.ring_degree


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.isdigit():
        raise ValueError(f"environment variable {name}={value!r}: launch with torchrun (or set RANK, WORLD_SIZE, "
                         "LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or use a WorkerGroup / Generator(sp_degree=N) on Ray")
    return int(value)


def apply_sequence_parallel(pipe, *, config: SequenceParallelConfig) -> None:
    """Join the process group and put `pipe.transformer` under xfuser's sequence-parallel wrapper (same weights)."""
    from ..models import spec_for_pipeline

    if not isinstance(config, SequenceParallelConfig):
        raise ValueError(f"config must be a SequenceParallelConfig, got {type(config).__name__}")
    spec = spec_for_pipeline(pipe)
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), int(os.environ.get("LOCAL_RANK", "0"))
    ulysses, ring = config.degrees(world)
    degree.check_heads(spec.family, pipe.transformer.config, ulysses)  # before any collective
    backend = config.backend if config.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local)
    xdit.init_parallel(rank=rank, world_size=world, init_method=config.init_method, backend=backend,
                       ulysses=ulysses, ring=ring, local_rank=local, cfg=config.cfg_degree)
    original = pipe.transformer
    if ulysses * ring > 1:  # one rank per CFG half keeps diffusers' own transformer
        pipe.transformer = xdit.wrap_transformer(original)
        xdit.init_runtime(pipe, ulysses=ulysses, ring=ring, cfg=config.cfg_degree)
    setattr(pipe, _ORIGINAL, original)


def remove_sequence_parallel(pipe) -> None:
    """Put the original transformer back (its parameters were never copied) and leave the process group."""
    original = getattr(pipe, _ORIGINAL, None)
    if original is None:
        return
    pipe.transformer = original
    delattr(pipe, _ORIGINAL)
    xdit.destroy_parallel()
