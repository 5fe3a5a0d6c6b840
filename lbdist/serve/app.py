"""The one module that imports `ray.serve`: the two deployments, the application builder, and a local runner.

    # Serve config (clusters/serve/*.yaml):  import_path: lbdist.serve.app:build_app   args: {model: ..., ...}
    serve deploy clusters/serve/video.yaml          # on a cluster
    lbdist serve run clusters/serve/video.yaml      # locally (Ray on loopback), Ctrl-C stops it

- `VideoIngress`: a thin FastAPI ingress (routes in `api.py`, logic in `service.py`) bound to the generator
  deployment's handle. It validates, stores and dispatches jobs, and answers from the job store.
- `GeneratorDeployment`: each replica owns one `lbdist.Generator` (`runner.ReplicaWorker`): one GPU, or a
  worker group of `sp_degree` GPUs reserved with `placement_group_bundles` (STRICT_PACK), which the group uses as
  its own placement group. `max_ongoing_requests=1`: one generation at a time; `autoscaling_config` scales the
  replicas on ongoing plus queued jobs. Adapter sets are chosen per request by id through the handle's
  `multiplexed_model_id` and kept resident with `@serve.multiplexed` (LRU of `max_adapters_per_replica`), so a
  replica alternating between sets loads each once. `check_health` runs a tiny probe generation when idle.
- Metrics (Prometheus, through Ray's metrics agent, prefixed `ray_`): `lbdist_queue_length`, `lbdist_jobs`
  {status}, `lbdist_step_latency_seconds`, `lbdist_generation_latency_seconds` {kind},
  `lbdist_transformer_calls_total` {kind}, `lbdist_adapter_loads_total` {adapter_set}, `lbdist_jobs_finished_total`
  {status}, `lbdist_rejected_total` {reason}.
"""
from __future__ import annotations

import asyncio
import logging

import inspect

try:
    from ray import serve
    from ray.serve import metrics as serve_metrics
except ImportError as exc:  # the extra is missing
    raise ImportError("lbdist.serve needs Ray Serve: pip install 'lbdist[serve]'") from exc

from .settings import GENERATOR, INGRESS, deployment_options, parse_settings, wants_gpus

if inspect.signature(serve.ingress).parameters["app"].default is not None:  # no late-bound ASGI app before it
    raise ImportError(f"lbdist.serve needs a Ray Serve whose serve.ingress() builds the app per replica "
                      f"(__serve_build_asgi_app__; tested with 2.60); this is Ray {__import__('ray').__version__}: "
                      "pip install -U 'ray[serve]'")
log = logging.getLogger("lbdist.serve")
STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
GENERATION_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]


class _GeneratorMetrics:
    def __init__(self):
        self._step = serve_metrics.Histogram("lbdist_step_latency_seconds", description="Wall time of one denoising "
                                             "step (all guidance branches; every rank of a group).",
                                             boundaries=STEP_BUCKETS)
        self._gen = serve_metrics.Histogram("lbdist_generation_latency_seconds", description="Wall time of one "
                                            "generation (text encoders, denoising, decoding).",
                                            boundaries=GENERATION_BUCKETS, tag_keys=("kind",))
        self._calls = serve_metrics.Counter("lbdist_transformer_calls_total", description="Transformer calls by "
                                            "kind: full, bridged, calibrated (bridged with an adapter).",
                                            tag_keys=("kind",))
        self._loads = serve_metrics.Counter("lbdist_adapter_loads_total", description="Adapter sets injected "
                                            "(multiplexing: once per set while it stays resident).",
                                            tag_keys=("adapter_set",))
        self._finished = serve_metrics.Counter("lbdist_jobs_finished_total", description="Jobs a replica ran to "
                                               "an end, by final status.", tag_keys=("status",))

    def step(self, seconds: float) -> None:
        self._step.observe(seconds)

    def generation(self, seconds: float, kind: str) -> None:
        self._gen.observe(seconds, tags={"kind": kind})

    def calls(self, calls: dict) -> None:
        for kind, count in calls.items():
            if count:
                self._calls.inc(count, tags={"kind": kind})

    def adapter_load(self, adapter_id: str) -> None:
        self._loads.inc(1, tags={"adapter_set": adapter_id})

    def finished(self, status: str) -> None:
        self._finished.inc(1, tags={"status": status})


class _IngressMetrics:
    def __init__(self):
        self._queue = serve_metrics.Gauge("lbdist_queue_length", description="Accepted jobs (and image requests) "
                                          "waiting for a generator replica.")
        self._jobs = serve_metrics.Gauge("lbdist_jobs", description="Jobs known to the ingress, by status.",
                                         tag_keys=("status",))
        self._rejected = serve_metrics.Counter("lbdist_rejected_total", description="Requests refused for load "
                                               "(429 queue_full, 503 overloaded / replica_died).",
                                               tag_keys=("reason",))

    def queue(self, waiting: int) -> None:
        self._queue.set(waiting)

    def jobs(self, counts: dict) -> None:
        for status, count in counts.items():
            self._jobs.set(count, tags={"status": status})

    def rejected(self, reason: str) -> None:
        self._rejected.inc(1, tags={"reason": reason})


def classify(exc: BaseException) -> str | None:
    """What a failed handle call means: Serve's queue bound ("backpressure"), a dead replica, or neither."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, (BackPressureError, DeploymentUnavailableError)):
        return "backpressure"
    if isinstance(exc, RayActorError):
        return "replica_died"
    return None


@serve.deployment(name=GENERATOR)
class GeneratorDeployment:
    """A replica: one Generator, one job at a time. Called by the ingress through its handle only."""

    def __init__(self, settings: dict, gpus: bool):
        from .runner import ReplicaWorker

        self.settings = parse_settings(settings)
        replica = serve.get_replica_context().replica_id.unique_id
        self.worker = ReplicaWorker(self.settings, replica, gpus, _GeneratorMetrics())

        async def load_adapter_set(adapter_id: str):
            token = await asyncio.to_thread(self.worker.preload, adapter_id)
            return _ResidentSet(self.worker, adapter_id, token)

        self.load_adapter_set = serve.multiplexed(max_num_models_per_replica=self.settings.max_adapters_per_replica)(
            load_adapter_set)

    async def _adapters(self) -> None:
        adapter_id = serve.get_multiplexed_model_id()
        if adapter_id:
            await self.load_adapter_set(adapter_id)

    async def run_job(self, job_id: str) -> dict:
        await self._adapters()
        return await self.worker.run_job(job_id)

    async def generate_image(self, request: dict) -> dict:
        await self._adapters()
        return await asyncio.to_thread(self.worker.generate_image, request)

    async def stats(self) -> dict:
        return await asyncio.to_thread(self.worker.stats)

    async def check_health(self) -> None:
        await asyncio.to_thread(self.worker.check_health)

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


class _ResidentSet:
    """What `@serve.multiplexed` holds per adapter set; Serve calls `__del__` when it evicts the set (LRU)."""

    def __init__(self, worker, adapter_id: str, token: str):
        self.worker, self.adapter_id, self.token = worker, adapter_id, token

    def __del__(self):
        worker, self.worker = getattr(self, "worker", None), None
        if worker is not None:  # Serve calls it, then the garbage collector: only the first call evicts
            worker.evict(self.adapter_id, self.token)


@serve.deployment(name=INGRESS)
@serve.ingress()
class VideoIngress:
    """The HTTP front: FastAPI routes over a JobService that dispatches jobs to the generator deployment."""

    def __init__(self, generator, settings: dict):
        from .service import JobService

        self.settings = parse_settings(settings)
        self.generator = generator
        self.service = JobService(self.settings, self._dispatch, self._image, classify, _IngressMetrics(),
                                  ingress_id=serve.get_replica_context().replica_id.unique_id)

    def __serve_build_asgi_app__(self):
        from .api import create_api

        return create_api(self.service)

    def _handle(self, adapter_id: str | None):
        return self.generator.options(multiplexed_model_id=adapter_id) if adapter_id else self.generator

    async def _dispatch(self, job_id: str, adapter_id: str | None) -> dict:
        return await self._handle(adapter_id).run_job.remote(job_id)

    async def _image(self, request: dict, adapter_id: str | None) -> dict:
        return await self._handle(adapter_id).generate_image.remote(request)


def build_app(args: dict | None = None):
    """The Serve application of a config's `args` (see `ServeSettings`); errors name the bad key."""
    import ray

    settings = parse_settings(args)
    settings.check_worker_group()
    cluster_gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else None
    gpus = wants_gpus(settings, cluster_gpus)
    options = deployment_options(settings, gpus)
    data = settings.model_dump()
    generator = GeneratorDeployment.options(**options[GENERATOR]).bind(data, gpus)
    return VideoIngress.options(**options[INGRESS]).bind(generator, data)


def deploy_schema():
    """Ray Serve's `ServeDeploySchema` (the schema of a `serve deploy` config); lbdist/clusters checks configs with
    it without importing ray.serve itself (this module is the one that does)."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema


def run_config(path: str, *, address: str | None = None, num_cpus: int | None = None, block: bool = True,
               timeout_s: float = 900.0, metrics_port: int | None = None, dashboard: bool = False) -> list[str]:
    """Deploy a Serve config file as `serve run CONFIG` does (local Ray unless `address`), wait until every
    application runs, print their URLs; with `block`, serve until Ctrl-C, then shut Serve and Ray down.
    `metrics_port`: where a local Ray exposes Prometheus metrics (http://127.0.0.1:PORT/metrics)."""
    import time

    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from .settings import load_config

    config, _ = load_config(path)  # our own strict checks first: a typo in args is an error naming it
    try:
        schema = ServeDeploySchema.model_validate(config)
    except Exception as exc:  # pydantic's ValidationError: Ray's own schema
        raise ValueError(f"{path}: not a Serve config: {str(exc).splitlines()[0]} ...") from None
    if not ray.is_initialized():
        local = {} if address else {"num_cpus": num_cpus, "include_dashboard": dashboard,
                                    **({"_metrics_export_port": metrics_port} if metrics_port else {})}
        ray.init(address=address, namespace="serve", **local)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    urls = _wait_running(schema, time.monotonic() + timeout_s)
    for url in urls:
        print(f"lbdist serve: {url}", flush=True)
    if block:
        try:
            while True:
                time.sleep(5)
        except KeyboardInterrupt:
            print("lbdist serve: shutting down", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return urls


def _wait_running(schema, deadline: float) -> list[str]:
    import time

    names = [app.name for app in schema.applications]
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError("; ".join(f"application {n!r} failed: {m}" for n, m in failed.items()))
        if all(s == "RUNNING" for s in states.values()):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not running in time: {states}")
        time.sleep(1)
    http = schema.http_options
    return [f"application {app.name!r} ready at http://{http.host}:{http.port}{app.route_prefix or '/'}"
            for app in schema.applications]
