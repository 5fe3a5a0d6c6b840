"""One rank of a worker group: a plain class that `WorkerGroup` runs as a Ray actor (one per GPU).

A rank joins the torch.distributed group and xfuser's parallel state (`setup`), builds its own pipeline from a
`PipelineFactory` and puts the transformer under xfuser's sequence-parallel wrapper (`load`), and runs each
generation collectively with its peers (`generate`): every rank runs the same pipeline call on the same noise,
the wrapper splits the tokens, and rank 0 returns the output. `run(fn, ...)` calls any picklable
`fn(worker, ...)` on every rank (benchmarks and pair recording use it). Nothing here imports Ray.

The bridge is enabled on the *wrapped* transformer, so its hooks see and cache each rank's own shard of the final
block's input; bridged steps come from the schedule, the same on every rank.
"""
from __future__ import annotations

import gc
import os
import socket
import time
from typing import Any, Callable

import torch

from . import degree, xdit
from .config import GenerationRequest, GenerationResult, PipelineFactory


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _cpu(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach().cpu()
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return type(output)(o.detach().cpu() for o in output)
    return output


class SPWorker:
    """State of one rank. Methods are called by `WorkerGroup` on all ranks at once."""

    def __init__(self, num_threads: int | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.rank: int | None = None
        self.world_size = 0
        self.sp_degree = 0
        self.device = torch.device("cpu")
        self.pipe = None
        self.family: str | None = None
        self._bridge_key: tuple | None = None

    # --- group formation ---------------------------------------------------------------------------------
    def node_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's answer is the rendezvous address."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, rank: int, world_size: int, init_method: str, backend: str, ulysses: int, ring: int) -> dict:
        if backend == "nccl" and not torch.cuda.is_available():
            raise RuntimeError(f"rank {rank}: backend 'nccl' needs a CUDA GPU, but this worker sees none "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use "
                               "backend='gloo' for CPU workers")
        index = 0  # Ray makes the actor's GPU the only visible one ...
        if backend == "nccl" and os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"):
            import ray  # ... unless told not to: then every actor sees every GPU and uses the one Ray assigned

            index = int(ray.get_gpu_ids()[0])
        self.device = torch.device("cuda", index) if backend == "nccl" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        xdit.init_parallel(rank=rank, world_size=world_size, init_method=init_method, backend=backend,
                           ulysses=ulysses, ring=ring, local_rank=index)
        self.rank, self.world_size, self.sp_degree = rank, world_size, ulysses * ring
        self.ulysses, self.ring = ulysses, ring
        info = xdit.parallel_info()
        info.update(pid=os.getpid(), device=str(self.device),
                    gpu=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
                    visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        return info

    # --- pipeline ------------------------------------------------------------------------------------------
    def load(self, factory: PipelineFactory) -> dict:
        """Build this rank's pipeline, wrap its transformer for SP, and return what the driver checks."""
        from ..models import get_spec

        self.unload()
        pipe = factory.build()
        transformer = getattr(pipe, "transformer", None)
        if transformer is None:
            raise ValueError(f"the pipeline factory returned {type(pipe).__name__}, which has no transformer")
        spec = get_spec(transformer)
        degree.check_heads(spec.family, transformer.config, self.ulysses)
        pipe.to(self.device)
        pipe.transformer = xdit.wrap_transformer(pipe.transformer)
        xdit.init_runtime(pipe, ulysses=self.ulysses, ring=self.ring)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.pipe, self.family = pipe, spec.family
        return {"family": spec.family, "transformer_class": type(pipe.transformer).__name__,
                "pipeline_class": type(pipe).__name__, "checksum": self.checksum()}

    def checksum(self) -> float:
        """Sum of every parameter of every pipeline component (ranks must hold identical weights)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for component in self.pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for p in component.parameters():
                    total += p.detach().sum(dtype=torch.float64)
        return float(total.item())

    def unload(self) -> None:
        self.pipe, self.family, self._bridge_key = None, None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _set_bridge(self, schedule, adapters: str | None) -> None:
        from ..bridge import disable_bridge, enable_bridge, reset_bridge

        key = None if schedule is None else (schedule, adapters)
        if key != self._bridge_key:
            disable_bridge(self.pipe)
            if schedule is not None:
                enable_bridge(self.pipe, schedule, adapters)
            self._bridge_key = key
        if key is not None:
            reset_bridge(self.pipe)  # a previous call that failed mid-way may have left a cache behind

    # --- work ----------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationResult | None:
        """Run one pipeline call collectively; rank 0 returns the result, other ranks None."""
        from ..bridge import bridge_stats

        if self.pipe is None:
            raise RuntimeError("no pipeline loaded on this worker; call group.load(factory) first")
        degree.check_call(self.pipe, self.family, request.call_kwargs, self.sp_degree)
        self._set_bridge(request.schedule, request.adapters)
        before = bridge_stats(self.pipe)
        start = time.perf_counter()
        out = self.pipe(prompt=request.prompt, generator=torch.Generator().manual_seed(request.seed),
                        **request.call_kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if self.rank != 0:
            return None
        after = bridge_stats(self.pipe)
        stats = {k: v - before.get(k, 0) for k, v in after.items()}
        output = out.frames if hasattr(out, "frames") else out.images
        return GenerationResult(output=_cpu(output), bridge_stats=stats, seconds=seconds)

    def run(self, fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> Any:
        """Call `fn(self, *args, **kwargs)` on this rank (the group calls it on every rank)."""
        return fn(self, *args, **(kwargs or {}))

    def ping(self) -> int:
        return os.getpid()

    def teardown(self) -> None:
        self.unload()
        xdit.destroy_parallel()
