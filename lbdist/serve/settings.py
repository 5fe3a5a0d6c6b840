"""`ServeSettings`: the `args` of a Serve application (`import_path: lbdist.serve.app:build_app`), validated.

    applications:
      - name: video
        import_path: lbdist.serve.app:build_app
        args: {model: "Wan-AI/Wan2.1-T2V-14B-Diffusers", sp_degree: 2, schedule: "6",
               adapters: {wan14b-n6: "s3://bucket/adapters/wan14b-n6"}, storage: "s3://bucket/lbdist-jobs",
               max_queued_jobs: 32}

An unknown key or a value out of range is an error naming the key and what is allowed (Ray's own schema accepts
anything under `args`). `deployment_options()` turns the settings into the options of the two deployments
(`VideoIngress`, `GeneratorDeployment`): GPUs per replica, placement-group bundles for sequence parallelism,
autoscaling, queue bounds, health checks. A Serve config's `deployments:` section can still override any of them
(for instance `autoscaling_config` of `GeneratorDeployment`). Plain data: nothing here imports Ray.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INGRESS = "VideoIngress"
GENERATOR = "GeneratorDeployment"
DEFAULT_STORAGE = "~/.lbdist/serve"


class ServeSettings(BaseModel):
    """What one lbdist Serve application serves, and how (every field documented in its description)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(description="Model reference: a Hub id, a local diffusers folder, toy:<family> or "
                                   "tiny:<family>. One application serves one model.")
    name: str | None = Field(None, description="Model name clients send and see (`model` of a request); "
                                               "default: the model reference.")
    factory: str | None = Field(None, description="'module:function' that builds the pipeline on every replica "
                                "(and rank) instead of loading `model` (random-weight benchmarks, custom loaders); "
                                "`model` then only names it. Must be deterministic across the ranks of a group.")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of `factory`.")
    sp_degree: int = Field(1, ge=1, le=64, description="GPUs per replica (xfuser Ulysses sequence parallelism); "
                                                        "> 1 reserves them with placement-group bundles, STRICT_PACK.")
    schedule: str | None = Field(None, description="Bridge schedule of requests that give none ('6', "
                                                   "'periodic:6:w=2', 'steps:0,5,...'); None: full compute.")
    adapters: dict[str, str] = Field(default_factory=dict, description="Adapter-set ids -> directory or URI of "
                                     "the set; requests choose one by id.")
    default_adapters: str | None = Field(None, description="Adapter-set id used by requests that name neither a "
                                         "schedule nor an adapter set (must be a key of `adapters`).")
    storage: str = Field(DEFAULT_STORAGE, description="Where job records and outputs live (local directory or "
                         "fsspec URI such as s3://bucket/jobs); every replica must reach the same place.")
    max_queued_jobs: int = Field(16, ge=1, le=100_000, description="Accepted jobs waiting for a replica; past it "
                                 "POST answers 429 with Retry-After.")
    max_adapters_per_replica: int = Field(2, ge=1, le=64, description="Adapter sets resident per replica "
                                          "(@serve.multiplexed LRU).")
    lease_s: float = Field(60.0, gt=0, le=86_400, description="A running job whose replica sent no heartbeat for "
                           "this long is failed (or retried); replicas beat every lease_s / 5.")
    progress_s: float = Field(1.0, ge=0.01, le=60, description="A running job's record (progress, heartbeat) is "
                              "rewritten this often (or every lease_s / 5 if shorter); GET shows progress this fresh.")
    retries: int = Field(0, ge=0, le=3, description="Times a job whose replica died is run again before it fails.")
    device: str = Field("auto", description="cuda, cpu or auto (GPUs reserved if the cluster has any at build "
                                            "time; say cuda on clusters whose GPU nodes scale from zero).")
    dtype: str = Field("auto", description="bfloat16, float16, float32 or auto (bf16 on GPU, fp32 on CPU).")
    replica_cpus: float = Field(1.0, gt=0, le=256, description="CPUs reserved by each generator replica process.")
    worker: dict[str, Any] = Field(default_factory=dict, description="Extra WorkerGroupConfig fields for "
                                   "sp_degree > 1 (backend, cpus_per_worker, gpus_per_worker, call_timeout_s).")
    min_replicas: int = Field(1, ge=0, le=1024, description="Autoscaling: fewest generator replicas.")
    max_replicas: int = Field(1, ge=1, le=1024, description="Autoscaling: most generator replicas.")
    target_ongoing_requests: float = Field(1.0, gt=0, le=64, description="Autoscaling target per replica "
                                           "(each replica runs one job at a time).")
    probe_interval_s: float = Field(300.0, ge=0, le=86_400, description="check_health runs a tiny generation at "
                                    "most this often on an idle replica (0: at every health check).")
    graceful_shutdown_s: float = Field(60.0, ge=0, le=86_400, description="How long a stopping replica may "
                                       "finish its running job.")
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads per replica (None: torch's).")

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k, v in value.items() if not k.strip() or not v.strip() or "/" in k]
        if bad:
            raise ValueError(f"adapter-set ids must be non-empty names without '/' mapped to non-empty references, "
                             f"got {bad}")
        return value

    @field_validator("factory")
    @classmethod
    def _factory(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"factory must be 'module:function', got {value!r}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            from ..generation.request import GenerationRequest

            GenerationRequest("x", schedule=value)  # the request's own check and message
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ServeSettings":
        if self.default_adapters is not None and self.default_adapters not in self.adapters:
            raise ValueError(f"default_adapters {self.default_adapters!r} is not a key of adapters "
                             f"{sorted(self.adapters)}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    def check_worker_group(self) -> None:
        """Degree and backend arithmetic of sp_degree > 1 (imports lbdist.parallel, so build time only)."""
        if self.sp_degree > 1:
            from ..parallel.config import WorkerGroupConfig

            try:
                WorkerGroupConfig(num_workers=self.sp_degree, **self.worker)
            except TypeError as exc:
                raise ValueError(f"worker: {exc}") from None

    # --- derived ---------------------------------------------------------------------------------------------
    def model_reference(self):
        """What the replicas' `Generator` loads: the model reference, or a `PipelineFactory` (imports torch)."""
        if self.factory is None:
            return self.model
        from ..parallel.config import PipelineFactory

        return PipelineFactory(self.factory, dict(self.factory_kwargs))

    @property
    def served_name(self) -> str:
        return self.name or self.model

    @property
    def storage_root(self) -> str:
        return self.storage if "://" in self.storage else os.path.abspath(os.path.expanduser(self.storage))

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.lease_s / 5)


def parse_settings(args: Mapping[str, Any] | None) -> ServeSettings:
    """`ServeSettings` from a config's `args`; ValueError naming each bad key and what is allowed."""
    if args is not None and not isinstance(args, Mapping):
        raise ValueError(f"application args must be a mapping, got {type(args).__name__}")
    try:
        return ServeSettings(**dict(args or {}))
    except ValidationError as exc:
        raise ValueError("invalid lbdist serve args: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'args'}: {_message(e)}" for e in exc.errors())) from None


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key; allowed keys: {', '.join(ServeSettings.model_fields)}"
    return error["msg"].removeprefix("Value error, ")


def wants_gpus(settings: ServeSettings, cluster_gpus: float | None = None) -> bool:
    """Whether replicas reserve GPUs: device cuda -> yes, cpu -> no, auto -> if the cluster has GPUs."""
    if settings.device == "cpu":
        return False
    if settings.device.startswith("cuda"):
        return True
    return bool(cluster_gpus)


def deployment_options(settings: ServeSettings, gpus: bool) -> dict[str, dict]:
    """Serve options of `VideoIngress` and `GeneratorDeployment` for these settings (plain dicts)."""
    generator: dict[str, Any] = {
        "max_ongoing_requests": 1,  # one generation at a time per replica (one GPU / one SP group)
        # Serve's own per-handle bound sits above ours, so it only trips on bursts of image requests
        "max_queued_requests": settings.max_queued_jobs + 2 * settings.max_replicas,
        "autoscaling_config": {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                               "target_ongoing_requests": settings.target_ongoing_requests,
                               "upscale_delay_s": 5, "downscale_delay_s": 300},
        "health_check_period_s": 10,
        "health_check_timeout_s": 120,
        "graceful_shutdown_timeout_s": settings.graceful_shutdown_s,
    }
    if settings.sp_degree == 1:
        generator["ray_actor_options"] = {"num_cpus": settings.replica_cpus, "num_gpus": 1 if gpus else 0}
    else:
        per_rank = float(settings.worker.get("cpus_per_worker", 1.0))
        rank = {"CPU": per_rank, **({"GPU": 1} if gpus else {})}
        generator["ray_actor_options"] = {"num_cpus": settings.replica_cpus, "num_gpus": 0}
        # bundle 0 holds the replica itself; the worker group (lbdist.parallel) schedules one rank per other bundle
        generator["placement_group_bundles"] = [{"CPU": settings.replica_cpus}] + [dict(rank)
                                                                                   for _ in range(settings.sp_degree)]
        generator["placement_group_strategy"] = "STRICT_PACK"
    ingress = {"num_replicas": 1, "max_ongoing_requests": 256, "max_queued_requests": 512,
               "ray_actor_options": {"num_cpus": 0.1}, "health_check_period_s": 10}
    return {INGRESS: ingress, GENERATOR: generator}


def generator_config_kwargs(settings: ServeSettings, gpus: bool) -> dict:
    """Keyword arguments of the replicas' `GeneratorConfig` (adapter sets are added as they are loaded)."""
    worker = dict(settings.worker)
    if settings.sp_degree > 1 and not gpus:
        worker.setdefault("gpus_per_worker", 0)
        worker.setdefault("backend", "gloo")
    device = "cpu" if not gpus else ("cuda" if settings.device == "auto" else settings.device)
    return {"device": device, "dtype": settings.dtype, "sp_degree": settings.sp_degree, "worker": worker,
            "threads": settings.threads}


def retry_after(queued: int, running: int, mean_job_s: float | None) -> int:
    """Seconds a client should wait before retrying a refused request (1..600)."""
    if not mean_job_s:
        return 5
    return int(min(600, max(1, math.ceil(mean_job_s * (queued + 1) / max(1, running)))))


IMPORT_PATH = "lbdist.serve.app:build_app"


def load_config(path: str) -> tuple[dict, dict[str, ServeSettings]]:
    """A Serve config file (YAML) and the parsed `ServeSettings` of each of its lbdist applications."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"cannot read Serve config {path!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    apps = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(apps, list) or not apps:
        raise ValueError(f"{path}: a Serve config needs a non-empty 'applications' list")
    settings = {}
    for i, app in enumerate(apps):
        name = app.get("name", f"applications[{i}]") if isinstance(app, dict) else f"applications[{i}]"
        if isinstance(app, dict) and app.get("import_path") == IMPORT_PATH:
            try:
                settings[name] = parse_settings(app.get("args"))
                settings[name].check_worker_group()
            except ValueError as exc:
                raise ValueError(f"{path}: application {name!r}: {exc}") from None
    if not settings:
        raise ValueError(f"{path}: no application has import_path {IMPORT_PATH!r}")
    return config, settings
