"""Frozen configs of the worker group: its shape and how each rank builds its pipeline.

Everything here is plain data (picklable, no Ray, no xfuser) and is validated on construction, before any
actor starts: an invalid value raises `ValueError` naming the value and what would be valid.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


BACKENDS = ("auto", "nccl", "gloo")
STRATEGIES = ("STRICT_PACK", "PACK")
# Forwarded from the driver's environment into every worker (NVLink multicast switches must reach every process).
FORWARD_ENV_PREFIXES = ("NCCL_", "TORCH_SYMM_MEM_", "NVSHMEM_")


class WorkerDiedError(RuntimeError):
    """A worker of the group died (killed, OOM, node lost); the group must be rebuilt with `restart()`."""

    def __init__(self, rank: int, cause: str):
        self.rank = rank
        super().__init__(
            f"rank {rank} of the worker group died ({cause}). Its peers were stopped too, since a "
            "sequence-parallel group cannot continue without every rank; call group.restart() to rebuild "
            "the group (new actors, new process group, the pipeline loaded again)")


class GroupBrokenError(RuntimeError):
    """The group lost a worker or a collective failed; only `restart()` or `shutdown()` are allowed."""


def _is_int(value) -> bool:
    return type(value) is int


def _positive(value) -> bool:
    """A real number > 0 (not a bool, a string or NaN, which `> 0` would raise on or mislead)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class WorkerGroupConfig:
    """Shape and resources of one sequence-parallel worker group (one Ray actor per GPU).

    Attributes:
        num_workers: ranks in the group (GPUs). Every rank holds the whole pipeline; each computes 1/num_workers
            of the tokens.
        ulysses_degree: Ulysses (all-to-all over heads) degree; default `num_workers // (cfg * ring)`. Ulysses is
            the faster of the two inside one node but needs the head count divisible by it.
        ring_degree: ring-attention degree (default 1).
        cfg_degree: 1, or 2 for CFG-parallel: each half of the ranks runs one guidance branch
            (`lbdist.parallel.cfg`); `cfg_degree * ulysses_degree * ring_degree` must equal `num_workers`.
        parallel_vae: decode with the VAE split over every rank (`lbdist.parallel.vae`, equal to one rank's
            decode within float tolerance) instead of every rank decoding the whole video.
        backend: "nccl" (GPUs), "gloo" (CPU) or "auto": nccl when the workers get GPUs, gloo otherwise.
        gpus_per_worker: GPUs reserved per actor: None = 1 if the Ray cluster has GPUs, else 0 (CPU workers).
        cpus_per_worker: CPUs reserved per actor (also its torch thread count on CPU).
        placement_strategy: "STRICT_PACK" (all ranks on one node: NVLink, default) or "PACK". Ignored when the
            group is created inside an existing placement group (a Serve replica's), which is used as is.
        env_vars: extra environment variables for every worker. Variables of the driver that start with
            `FORWARD_ENV_PREFIXES` (NCCL_, TORCH_SYMM_MEM_, NVSHMEM_) are forwarded as well.
        start_timeout_s: how long to wait for the actors to be scheduled and the process group to form.
        call_timeout_s: how long one call (load, generate, run) may take on every rank; past it the group is
            declared stuck (a deadlocked collective) and stopped. None waits forever.
        verify_weights: compare a checksum of every rank's transformer after loading; ranks holding different
            weights (an unseeded factory) would silently produce garbage.
    """

    num_workers: int
    ulysses_degree: int | None = None
    ring_degree: int = 1
    cfg_degree: int = 1
    parallel_vae: bool = True
    backend: str = "auto"
    gpus_per_worker: int | None = None
    cpus_per_worker: float = 1.0
    placement_strategy: str = "STRICT_PACK"
    env_vars: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 600.0
    call_timeout_s: float | None = None
    verify_weights: bool = True

    def __post_init__(self):
        if not _is_int(self.num_workers) or self.num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1, got {self.num_workers!r}")
        if not _is_int(self.ring_degree) or self.ring_degree < 1:
            raise ValueError(f"ring_degree must be an integer >= 1, got {self.ring_degree!r}")
        if not _is_int(self.cfg_degree) or self.cfg_degree not in (1, 2):
            raise ValueError(f"cfg_degree must be 1 or 2 (two guidance branches at most), got {self.cfg_degree!r}")
        ulysses, split = self.ulysses_degree, self.ring_degree * self.cfg_degree
        if ulysses is None:
            if self.num_workers % split:
                what = f"ring({self.ring_degree})" if self.cfg_degree == 1 else \
                    f"cfg({self.cfg_degree}) * ring({self.ring_degree}) = {split}"
                raise ValueError(f"num_workers({self.num_workers}) is not divisible by {what}; pick degrees among the "
                                 "divisors of num_workers")
            ulysses = self.num_workers // split
            object.__setattr__(self, "ulysses_degree", ulysses)
        if not _is_int(ulysses) or ulysses < 1:
            raise ValueError(f"ulysses_degree must be an integer >= 1, got {ulysses!r}")
        if ulysses * split != self.num_workers:
            raise ValueError(f"cfg({self.cfg_degree}) * ulysses({ulysses}) * ring({self.ring_degree}) = "
                             f"{ulysses * split} != world_size({self.num_workers}): the degrees must multiply to the "
                             "number of workers")
        if not isinstance(self.parallel_vae, bool):
            raise ValueError(f"parallel_vae must be true or false, got {self.parallel_vae!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.gpus_per_worker is not None and (not _is_int(self.gpus_per_worker) or self.gpus_per_worker not in (0, 1)):
            raise ValueError(f"gpus_per_worker must be 0, 1 or None (auto), got {self.gpus_per_worker!r}: "
                             "one rank drives one GPU")
        if self.gpus_per_worker == 0 and self.backend == "nccl":
            raise ValueError("backend 'nccl' needs GPUs but gpus_per_worker=0; use backend='gloo' for CPU workers")
        if not _positive(self.cpus_per_worker):
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.placement_strategy not in STRATEGIES:
            raise ValueError(f"placement_strategy must be one of {STRATEGIES}, got {self.placement_strategy!r}")
        if not _positive(self.start_timeout_s):
            raise ValueError(f"start_timeout_s must be > 0, got {self.start_timeout_s!r}")
        if self.call_timeout_s is not None and not _positive(self.call_timeout_s):
            raise ValueError(f"call_timeout_s must be > 0 or None, got {self.call_timeout_s!r}")
        if not isinstance(self.env_vars, Mapping):
            raise ValueError(f"env_vars must be a mapping of variable names to values, got {self.env_vars!r:.80}")
        if not isinstance(self.verify_weights, bool):
            raise ValueError(f"verify_weights must be True or False, got {self.verify_weights!r:.80}")
        object.__setattr__(self, "env_vars", dict(self.env_vars))

    def worker_env(self) -> dict[str, str]:
        """Environment of every worker: forwarded driver variables, then `env_vars`."""
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}
        env.update({str(k): str(v) for k, v in self.env_vars.items()})
        return env


@dataclass(frozen=True)
class PipelineFactory:
    """How each rank builds its own pipeline, so weights never travel through Ray's object store.

    `target` is a picklable callable or a `"module:function"` string; `build()` calls it with `kwargs` and it
    must return a diffusers pipeline (WanPipeline, HunyuanVideoPipeline, FluxPipeline). It runs once on every
    rank and must be deterministic: ranks must hold identical weights (load from a path, or seed random init).

        PipelineFactory("diffusers:WanPipeline.from_pretrained", {"pretrained_model_name_or_path": path,
                                                                  "torch_dtype": torch.bfloat16})
        PipelineFactory("lbdist.toy.build:build_pipeline", {"family": "wan", "size": "tiny", "seed": 0})
    """

    target: str | Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.target, str):
            module, sep, attr = self.target.partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"factory target {self.target!r} must look like 'package.module:function' "
                                 "(or 'module:Class.method')")
        elif not callable(self.target):
            raise ValueError(f"factory target must be a callable or a 'module:function' string, got "
                             f"{type(self.target).__name__}")
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    def resolve(self) -> Callable[..., Any]:
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def build(self):
        return self.resolve()(**self.kwargs)
