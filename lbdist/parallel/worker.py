"""One rank of a worker group: a plain class that `WorkerGroup` runs as a Ray actor (one per GPU).

A rank joins the torch.distributed group and xfuser's parallel state (`setup`), builds its own pipeline from a
`PipelineFactory`, puts the transformer under xfuser's sequence-parallel wrapper and builds an `Engine` over it
(`load`), and runs each request collectively with its peers (`generate`): every rank runs the same `Engine.run` on
the same noise, the wrapper splits the tokens, and rank 0 returns the `GenerationResult`. Progress goes from rank 0
to the driver through a small control actor; cancellation is read by rank 0 and broadcast, so every rank stops at
the same step boundary. `run(fn, ...)` calls any picklable `fn(worker, ...)` on every rank (benchmarks and pair
recording use it). Nothing here imports Ray at module import.

The bridge is enabled on the *wrapped* transformer, so its hooks see and cache each rank's own shard of the final
block's input; bridged steps come from the schedule, the same on every rank.
"""
from __future__ import annotations

import gc
import os
import socket
from typing import Any, Callable

import torch

from ..generation.request import GenerationRequest, GenerationResult
from . import degree, xdit
from .config import PipelineFactory


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
        self.engine = None
        self.family: str | None = None
        self.cfg, self.parallel_vae, self.cfg_group, self.vae_split = 1, False, None, None

    # --- group formation ---------------------------------------------------------------------------------
    def node_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's answer is the rendezvous address."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, rank: int, world_size: int, init_method: str, backend: str, ulysses: int, ring: int,
              cfg: int = 1, parallel_vae: bool = True) -> dict:
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
                           ulysses=ulysses, ring=ring, local_rank=index, cfg=cfg)
        self.rank, self.world_size, self.sp_degree = rank, world_size, ulysses * ring
        self.ulysses, self.ring, self.cfg, self.parallel_vae = ulysses, ring, cfg, parallel_vae
        self.cfg_group = None
        if cfg > 1:  # collective: every rank builds every pair group
            from .cfg import CFGParallelConfig, pair_groups

            self.cfg_group = pair_groups(CFGParallelConfig(cfg, ulysses * ring))
        info = xdit.parallel_info()
        info.update(pid=os.getpid(), device=str(self.device),
                    gpu=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
                    visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        return info

    # --- pipeline ------------------------------------------------------------------------------------------
    def load(self, factory: PipelineFactory, engine_options: dict | None = None) -> dict:
        """Build this rank's pipeline, wrap its transformer for SP, build its Engine; return what the driver checks.

        The factory may return a `LoadedPipeline` (`lbdist.generation.loading.load_pipeline`) or a bare pipeline;
        a factory that takes `device` gets this rank's device.
        """
        import inspect

        from ..generation.engine import Engine
        from ..generation.loading import LoadedPipeline
        from ..models import get_spec

        self.unload()
        target = factory.resolve()
        kwargs = dict(factory.kwargs)
        try:
            if "device" in inspect.signature(target).parameters:
                kwargs["device"] = str(self.device)
        except (TypeError, ValueError):  # builtins / C callables have no signature
            pass
        built = target(**kwargs)
        loaded = built if isinstance(built, LoadedPipeline) else None
        pipe = loaded.pipe if loaded is not None else built
        transformer = getattr(pipe, "transformer", None)
        if transformer is None:
            raise ValueError(f"the pipeline factory returned {type(pipe).__name__}, which has no transformer")
        spec = get_spec(transformer)
        degree.check_heads(spec.family, transformer.config, self.ulysses)
        pipe.to(self.device)
        if self.sp_degree > 1:  # one rank per half (CFG-parallel alone) keeps diffusers' own transformer
            pipe.transformer = xdit.wrap_transformer(pipe.transformer)
            xdit.init_runtime(pipe, ulysses=self.ulysses, ring=self.ring, cfg=self.cfg)
        if loaded is None:
            loaded = LoadedPipeline(pipe, spec.family, "", {})
        self.pipe, self.family = pipe, spec.family
        self.engine = Engine(loaded, **(engine_options or {}))  # bridge hooks (and compiled blocks) first
        if self.cfg > 1:
            from .cfg import CFGParallelConfig, apply_cfg_parallel

            apply_cfg_parallel(pipe, config=CFGParallelConfig(self.cfg, self.sp_degree), group=self.cfg_group)
        if self.parallel_vae and self.world_size > 1:
            from .vae import apply_parallel_vae

            self.vae_split = apply_parallel_vae(pipe)
        return {"family": spec.family, "transformer_class": type(pipe.transformer).__name__,
                "pipeline_class": type(pipe).__name__, "checksum": self.checksum(), "info": self.engine.info}

    def checksum(self) -> float:
        """Sum of every parameter of every pipeline component (ranks must hold identical weights)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for component in self.pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for p in component.parameters():
                    total += p.detach().sum(dtype=torch.float64)
        return float(total.item())

    def unload(self) -> None:
        self.pipe, self.engine, self.family = None, None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- work ----------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, control=None, keep_latents: bool = False
                 ) -> GenerationResult | None:
        """Run one request collectively; rank 0 returns the result, other ranks None.

        `control` (a `GenerationControl` actor handle, or None) receives rank 0's progress and holds the cancel flag.
        """
        if self.engine is None:
            raise RuntimeError("no pipeline loaded on this worker; call group.load(factory) first")
        resolved = request.resolve(self.engine.info)
        degree.check_call(self.pipe, self.family, resolved.call_kwargs(self.engine.info), self.sp_degree)
        progress = cancel = None
        if control is not None:
            progress = (lambda done, total: control.progress.remote(done, total)) if self.rank == 0 else None
            cancel = lambda: self._agree(control)  # noqa: E731
        result = self.engine.run(resolved, progress=progress, cancel=cancel, keep_latents=keep_latents)
        if self.cfg > 1:
            from .cfg import after_call

            result.calls = after_call(self.pipe, result.calls)  # both branches counted, as on one device
        if self.rank != 0:
            return None
        if result.latents is not None:
            result.latents = result.latents.detach().cpu()
        return result

    def _agree(self, control) -> bool:
        """Rank 0 reads the cancel flag; a broadcast makes every rank take the same decision at the same step."""
        import ray

        flag = torch.zeros(1, dtype=torch.int32, device=self.device)
        if self.rank == 0:
            flag[0] = int(bool(ray.get(control.cancelled.remote())))
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def run(self, fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> Any:
        """Call `fn(self, *args, **kwargs)` on this rank (the group calls it on every rank)."""
        return fn(self, *args, **(kwargs or {}))

    def ping(self) -> int:
        return os.getpid()

    def teardown(self) -> None:
        self.unload()
        xdit.destroy_parallel()
