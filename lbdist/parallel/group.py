"""`WorkerGroup`: Ray actors, one per GPU, that together hold one sequence-parallel copy of a pipeline.

`start()` validates everything it can without actors (degrees, backend against the cluster's GPUs, the xfuser
install), reserves the GPUs with a placement group (STRICT_PACK; inside an existing placement group, such as a
Serve replica's, it uses that one), starts the actors, forms the process group at rank 0's address, and has every
rank build its pipeline from the factory. Calls then run on every rank at once; rank 0's answer is returned.

A rank that dies fails the call with `WorkerDiedError` naming it; its peers are stopped (they would wait in a
collective forever) and `restart()` rebuilds the group. `shutdown()` stops the actors and removes the placement
group if this group created it, which frees the GPUs.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ..generation.request import GenerationRequest, GenerationResult
from .config import GroupBrokenError, PipelineFactory, WorkerDiedError, WorkerGroupConfig
from .worker import SPWorker

PEER_GRACE_S = 60.0  # after one rank raised, how long its peers may take to finish before the group is broken


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("worker groups need Ray: pip install 'lbdist[sp]'") from exc
    return ray


class WorkerGroup:
    """One sequence-parallel pipeline spread over `config.num_workers` Ray actors. See `lbdist.parallel`."""

    def __init__(self, config: WorkerGroupConfig, factory: PipelineFactory | None = None):
        if not isinstance(config, WorkerGroupConfig):
            raise ValueError(f"config must be a WorkerGroupConfig, got {type(config).__name__}")
        self.config = config
        self.factory = factory
        self.actors: list = []
        self.info: list[dict] = []
        self.model: dict | None = None
        self.backend: str | None = None
        self.gpus_per_worker: int | None = None
        self._pg = None
        self._owns_pg = False
        self._broken: str | None = None

    # --- life cycle ----------------------------------------------------------------------------------------
    def _resolve_resources(self, ray) -> tuple[int, str]:
        cfg = self.config
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
        gpus = cfg.gpus_per_worker
        if gpus is None:
            gpus = 0 if cfg.backend == "gloo" else (1 if cluster_gpus > 0 or cfg.backend == "nccl" else 0)
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if gpus else "gloo")
        if gpus and cluster_gpus < cfg.num_workers:
            raise RuntimeError(f"backend {backend!r} needs {cfg.num_workers} GPUs (one per worker), but the Ray "
                               f"cluster has {cluster_gpus}; use backend='gloo' with gpus_per_worker=0 for CPU "
                               "workers, or a cluster with GPUs")
        if backend == "gloo" and gpus:
            raise ValueError("backend 'gloo' with GPU workers is not supported: use backend='nccl' (or 'auto') for "
                             "GPUs, or gpus_per_worker=0 for CPU workers")
        return gpus, backend

    def _placement_group(self, ray, bundle: dict):
        from ray.util.placement_group import placement_group, remove_placement_group

        current = ray.util.get_current_placement_group()
        if current is not None:
            self._pg, self._owns_pg = current, False
            return
        pg = placement_group([dict(bundle) for _ in range(self.config.num_workers)],
                             strategy=self.config.placement_strategy)
        ready, _ = ray.wait([pg.ready()], timeout=self.config.start_timeout_s)
        if not ready:
            remove_placement_group(pg)
            raise RuntimeError(
                f"could not reserve {self.config.num_workers} x {bundle} ({self.config.placement_strategy}) within "
                f"{self.config.start_timeout_s:.0f} s; the cluster has {ray.cluster_resources()}, available "
                f"{ray.available_resources()}")
        self._pg, self._owns_pg = pg, True

    def start(self) -> "WorkerGroup":
        """Reserve resources, start the actors, form the process group and load the factory's pipeline."""
        from . import xdit

        if self.actors:
            raise RuntimeError("the group is already started; call restart() or shutdown() first")
        xdit.check_installed()
        ray = _ray()
        if not ray.is_initialized():
            ray.init()
        cfg = self.config
        gpus, backend = self._resolve_resources(ray)
        bundle = {"CPU": cfg.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        self._placement_group(ray, bundle)
        try:
            self._start_actors(ray, gpus, backend)
            self.gpus_per_worker, self.backend, self._broken = gpus, backend, None
            if self.factory is not None:
                self.load(self.factory, getattr(self, "engine_options", None))
        except BaseException:
            self.shutdown()
            raise
        return self

    def _start_actors(self, ray, gpus: int, backend: str) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = self.config
        remote = ray.remote(SPWorker)
        threads = None if gpus else max(1, int(cfg.cpus_per_worker))
        for rank in range(cfg.num_workers):
            strategy = PlacementGroupSchedulingStrategy(
                self._pg, placement_group_bundle_index=rank if self._owns_pg else -1)
            self.actors.append(remote.options(
                num_cpus=cfg.cpus_per_worker, num_gpus=gpus, scheduling_strategy=strategy, max_restarts=0,
                runtime_env={"env_vars": cfg.worker_env()}, name=None).remote(threads))
        address, port = self._gather([self.actors[0].node_address.remote()], timeout=cfg.start_timeout_s)[0]
        init_method = f"tcp://{address}:{port}"
        self.info = self._gather([a.setup.remote(rank, cfg.num_workers, init_method, backend, cfg.ulysses_degree,
                                                 cfg.ring_degree, cfg.cfg_degree, cfg.parallel_vae)
                                  for rank, a in enumerate(self.actors)],
                                 timeout=cfg.start_timeout_s)

    def load(self, factory: PipelineFactory, engine_options: dict | None = None) -> dict:
        """Have every rank build its pipeline and Engine from `factory` (replacing any loaded one); returns rank 0's
        info (family, classes, and `info`, the `ModelInfo` requests are resolved against).

        `engine_options`: keyword arguments of every rank's `Engine` (named adapter sets, cache limits).
        """
        if not isinstance(factory, PipelineFactory):
            raise ValueError(f"factory must be a PipelineFactory, got {type(factory).__name__}")
        self.model = None  # ranks unload the old pipeline first; a failed load leaves none
        self.engine_options = dict(engine_options or {})
        infos = self._call("load", factory, self.engine_options)
        sums = [info.pop("checksum") for info in infos]
        if self.config.verify_weights and any(abs(s - sums[0]) > 1e-6 * max(1.0, abs(sums[0])) for s in sums):
            raise RuntimeError(f"the ranks built different weights (parameter checksums {sums}): the pipeline "
                               "factory must be deterministic (load from a path, or seed its random init)")
        self.factory, self.model = factory, infos[0]
        return infos[0]

    def restart(self) -> "WorkerGroup":
        """Stop whatever is left of the group and build it again (new actors, same config and factory)."""
        self.shutdown()
        return self.start()

    def shutdown(self) -> None:
        """Stop the actors and remove the placement group this group created; safe to call twice."""
        ray = _ray()
        if self.actors and not self._broken and ray.is_initialized():
            refs = [a.teardown.remote() for a in self.actors]
            ray.wait(refs, num_returns=len(refs), timeout=30)
        self._kill_actors()
        if self._pg is not None and self._owns_pg and ray.is_initialized():
            from ray.util.placement_group import remove_placement_group

            from ray.util.placement_group import placement_group_table

            remove_placement_group(self._pg)
            deadline = time.monotonic() + 10  # removal is asynchronous; return once the resources are back
            while time.monotonic() < deadline and placement_group_table(self._pg).get("state") != "REMOVED":
                time.sleep(0.05)
        self._pg, self._owns_pg, self.model, self.info = None, False, None, []

    def _kill_actors(self) -> None:
        ray = _ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead, or Ray shut down
                pass
        self.actors = []

    def __enter__(self) -> "WorkerGroup":
        return self.start() if not self.actors else self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --- calls -----------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest | str, *, control=None, keep_latents: bool = False,
                 **fields) -> GenerationResult:
        """Run one request on every rank; returns rank 0's `GenerationResult`.

        Pass a `GenerationRequest`, or a prompt with request fields as keywords:
        `group.generate("a red fox", seed=1, num_inference_steps=50, schedule="6")`. `control` is a
        `GenerationControl` actor (progress and cancel; `lbdist.Generator` passes one).
        """
        if isinstance(request, str):
            request = GenerationRequest(request, **fields)
        elif fields:
            raise ValueError("pass either a GenerationRequest or a prompt with keywords, not both")
        if self.model is None:
            raise RuntimeError("no pipeline is loaded: give the group a factory, or call group.load(factory)")
        return self._call("generate", request, control, keep_latents)[0]

    def submit(self, method: str, *args) -> list:
        """Start `method` on every rank without waiting; `collect(refs)` waits for the results (rank order)."""
        if self._broken:
            raise GroupBrokenError(f"the worker group is broken ({self._broken}); call restart() to rebuild it")
        if not self.actors:
            raise RuntimeError("the worker group is not started; call start() first")
        return [getattr(a, method).remote(*args) for a in self.actors]

    def collect(self, refs: list) -> list:
        return self._gather(refs, self.config.call_timeout_s)

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> list:
        """Call `fn(worker, *args, **kwargs)` on every rank (collectively); returns every rank's result."""
        return self._call("run", fn, args, kwargs)

    def _call(self, method: str, *args) -> list:
        return self.collect(self.submit(method, *args))

    def _gather(self, refs: list, timeout: float | None = None) -> list:
        """Results of one collective call in rank order; a dead rank or a stuck collective breaks the group."""
        ray = _ray()
        from ray.exceptions import RayActorError, RayTaskError

        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending, failure, deadline = list(refs), None, None if timeout is None else time.monotonic() + timeout
        while pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait)
            if not ready:
                break
            rank = index[ready[0]]
            try:
                results[rank] = ray.get(ready[0])
            except RayActorError as exc:
                self._break(f"rank {rank} died")
                raise WorkerDiedError(rank, _first_line(exc)) from exc
            except RayTaskError as exc:
                if failure is None:
                    failure = (rank, exc)
                    deadline = time.monotonic() + PEER_GRACE_S
        if pending:
            waiting = sorted(index[r] for r in pending)
            self._break(f"ranks {waiting} did not finish")
            if failure is None:
                raise TimeoutError(f"ranks {waiting} did not answer within {timeout} s (a stuck collective?); the "
                                   "group was stopped: call restart()")
        if failure is not None:
            rank, exc = failure
            cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
            if pending:
                cause.args = (f"{cause.args[0] if cause.args else cause} [rank {rank}; its peers were stuck in a "
                              "collective, so the group was stopped: call restart()]", *cause.args[1:])
            raise cause from exc
        return results

    def _break(self, why: str) -> None:
        self._broken = why
        self._kill_actors()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
