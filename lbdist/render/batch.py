"""`render`: a prompts file to videos or images on a Ray cluster, with Ray Data `map_batches` over a pool of
`Generator` actors that grows and shrinks between `actors=(min, max)`.

    from lbdist.render import RenderConfig, render
    report = render("prompts.jsonl", "s3://bucket/batch-01", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                    RenderConfig(actors=(1, 8), defaults={"schedule": "6", "adapters": "adapters/wan-n6"}))
    report.rendered, report.failed, report.skipped

The path of one batch: parse the prompts file (bad lines reported by number, left out); load the manifest at
the output URI and skip the items that finished before; stream the rest, one item per block and per call, through
`map_batches(RenderActor, compute=ActorPoolStrategy(min_size, max_size))`; take each item's record as it comes
back (progress in the log, a bar on a terminal) and rewrite the manifest every few seconds and at the end.

Fault tolerance is Ray Data's: an actor that dies is restarted and the item it held is run again; the driver
counts an item once even if its record arrives twice (`duplicates`), and outputs are written atomically under
the item's stable id, so a re-run item replaces its file whole.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import storage
from .manifest import Manifest
from .prompts import PromptFile, RenderItem, read_prompts

log = logging.getLogger("lbdist.render")
MAX_BLOCKS = 100_000  # one item per block up to this many items (finest load balance); more share blocks


@dataclass(frozen=True)
class RenderConfig:
    """How a batch renders.

    Attributes:
        actors: (min, max) actors of the pool; Ray Data starts `min` and adds actors up to `max` while items
            wait (and the cluster has room); None: 1 .. (the cluster's GPUs, or CPUs, now) // per actor.
        sp_degree: GPUs (ranks) per actor. 1: each actor holds the model on one GPU (best throughput when the
            model fits; see `choose_layout`); N > 1: each actor drives a sequence-parallel worker group of N
            ranks in its own placement group (lower latency per item, or a model that needs N GPUs' memory).
        defaults: GenerationRequest fields every line starts from (schedule, adapters, steps, seed, size, ...).
        adapters: adapter-set names -> references that lines may name in "adapters".
        device, dtype: as `GeneratorConfig` (the actor's device; auto: its GPU if it has one).
        gpus: give actors GPUs: None = if the cluster has any; False: CPU actors (tests, smoke runs).
        cpus_per_actor: CPUs per actor (SP 1) or per rank (SP > 1); also the torch threads of a CPU actor.
        worker: extra `WorkerGroupConfig` fields of SP actors (call_timeout_s, start_timeout_s, ...).
        retry_failed: render again the items whose earlier run failed (True), or leave them failed.
        manifest_every_s: rewrite the manifest at most this often while items finish (and once at the end).
        log_every_s: log a progress line at most this often (and at the end).
        progress_bar: a tqdm bar; None: when stderr is a terminal.
    """

    actors: tuple[int, int] | None = None
    sp_degree: int = 1
    defaults: Mapping[str, Any] = field(default_factory=dict)
    adapters: Mapping[str, str] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    gpus: bool | None = None
    cpus_per_actor: float = 1.0
    worker: Mapping[str, Any] = field(default_factory=dict)
    retry_failed: bool = True
    manifest_every_s: float = 5.0
    log_every_s: float = 30.0
    progress_bar: bool | None = None

    def __post_init__(self):
        if self.actors is not None:
            if (not isinstance(self.actors, tuple) or len(self.actors) != 2
                    or not all(type(a) is int for a in self.actors) or not 1 <= self.actors[0] <= self.actors[1]):
                raise ValueError(f"actors must be (min, max) integers with 1 <= min <= max, got {self.actors!r}")
        if type(self.sp_degree) is not int or self.sp_degree < 1:
            raise ValueError(f"sp_degree must be an integer >= 1, got {self.sp_degree!r}")
        if not self.cpus_per_actor > 0:
            raise ValueError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor!r}")
        for name in ("manifest_every_s", "log_every_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        for name in ("defaults", "adapters", "worker"):
            object.__setattr__(self, name, dict(getattr(self, name)))

    def generator_config(self, gpus: bool):
        """The `GeneratorConfig` of every actor (validated here, on the driver, before any actor starts)."""
        from ..generation.generator import GeneratorConfig

        threads = None if gpus else max(1, int(self.cpus_per_actor))
        if self.sp_degree == 1:
            return GeneratorConfig(device=self.device if gpus or self.device != "auto" else "cpu", dtype=self.dtype,
                                   adapters=self.adapters, threads=threads)
        worker = {"gpus_per_worker": 1 if gpus else 0, "cpus_per_worker": self.cpus_per_actor,
                  **({} if gpus else {"backend": "gloo"}), **self.worker}
        return GeneratorConfig(dtype=self.dtype, sp_degree=self.sp_degree, adapters=self.adapters, worker=worker)


@dataclass
class RenderReport:
    """What a batch did. `total`: items in the prompts file; `skipped`: finished on an earlier run; `rendered` /
    `failed`: this run; `invalid`: bad lines; `repeats`: lines repeating another line's request; `duplicates`:
    records that came back twice (an actor died after finishing an item); `seconds`: this run's wall time."""

    total: int = 0
    skipped: int = 0
    rendered: int = 0
    failed: int = 0
    invalid: int = 0
    repeats: int = 0
    duplicates: int = 0
    skipped_failed: int = 0
    seconds: float = 0.0
    manifest: str = ""
    layout: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    @property
    def items_per_hour(self) -> float:
        return 3600.0 * self.rendered / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.invalid == 0 and self.skipped_failed == 0

    def summary(self) -> str:
        return (f"{self.rendered} rendered, {self.failed} failed, {self.skipped} skipped (finished before), "
                f"{self.invalid} bad lines, {self.repeats} repeated lines of {self.total} items in "
                f"{self.seconds:.1f} s ({self.items_per_hour:.0f} items/h); manifest {self.manifest}")


def model_key(model) -> str:
    """The model's part of every item id: its reference, or a factory's target and arguments."""
    if isinstance(model, str):
        return model
    target = getattr(model, "target", model)
    name = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    return f"{name}{json.dumps(dict(getattr(model, 'kwargs', {})), sort_keys=True, default=str)}"


def plan(prompts: PromptFile, manifest: Manifest, retry_failed: bool, report: RenderReport) -> list[RenderItem]:
    """The items still to render; counts the skipped ones in `report`."""
    pending = []
    for item in prompts.items:
        record = manifest.records.get(item.id)
        if manifest.finished(item.id):
            report.skipped += 1
            manifest.relocate(item.id, item.line)
        elif record is not None and record.get("status") == "error" and not retry_failed:
            report.skipped_failed += 1
            manifest.relocate(item.id, item.line)
        else:
            pending.append(item)
    return pending


def render(prompts: str, out: str, model, config: RenderConfig | None = None, *,
           on_record: Callable[[dict], None] | None = None) -> RenderReport:
    """Render every item of a prompts file to `out` (a local directory or URI); see the module docstring.

    model: a model reference or a `PipelineFactory`. on_record: called on the driver with each finished item's
    record (tests, custom progress). Raises ValueError for bad arguments before anything starts.
    """
    config = config or RenderConfig()
    if not isinstance(config, RenderConfig):
        raise ValueError(f"config must be a RenderConfig, got {type(config).__name__}")
    storage.makedirs(out)
    storage.check_writable(storage.join(out, "manifest.jsonl"))
    parsed = read_prompts(prompts, defaults=config.defaults, model_key=model_key(model))
    report = RenderReport(total=len(parsed.items), invalid=len(parsed.errors), repeats=len(parsed.repeats),
                          manifest=storage.join(out, "manifest.jsonl"), errors=[str(e) for e in parsed.errors])
    for error in parsed.errors:
        log.error("%s:%d: %s (line left out; the rest renders)", prompts, error.line, error.message)
    for repeat in parsed.repeats:
        log.warning("%s:%d: %s", prompts, repeat.line, repeat.message)
    manifest = Manifest.load(out)
    manifest.set_invalid(parsed.errors)
    pending = plan(parsed, manifest, config.retry_failed, report)
    log.info("%d items in %s: %d finished before (skipped), %d to render, %d bad lines", report.total, prompts,
             report.skipped, len(pending), report.invalid)
    started = time.perf_counter()
    try:
        if pending:
            _run(pending, out, model, config, manifest, report, on_record)
    finally:
        manifest.flush(force=True)
        report.seconds = time.perf_counter() - started
    log.info("batch done: %s", report.summary())
    return report


def _actor_bounds(config: RenderConfig, ray, gpus: bool, pending: int) -> tuple[int, int]:
    if config.actors is not None:
        low, high = config.actors
    else:
        resources = ray.cluster_resources()
        per_actor = config.sp_degree if gpus else config.sp_degree * config.cpus_per_actor
        high = max(1, int(resources.get("GPU" if gpus else "CPU", 0) // per_actor))
        low = 1
    high = max(1, min(high, pending))
    return min(low, high), high


def _run(pending, out, model, config, manifest, report, on_record) -> None:
    import ray

    if not ray.is_initialized():
        ray.init()
    gpus = config.gpus if config.gpus is not None else ray.cluster_resources().get("GPU", 0) > 0
    generator_config = config.generator_config(gpus)
    low, high = _actor_bounds(config, ray, gpus, len(pending))
    report.layout = {"actors": [low, high], "sp_degree": config.sp_degree, "gpus": bool(gpus)}
    log.info("rendering %d items on %d..%d actors x SP %d (%s)", len(pending), low, high, config.sp_degree,
             "GPUs" if gpus else "CPUs")
    placement = None
    with _RenderDataContext() as restore:
        dataset, placement = _dataset(pending, out, model, config, generator_config, gpus, (low, high))
        restore()
    try:
        _consume(dataset, len(pending), config, manifest, report, on_record)
    finally:
        if placement is not None:
            left = placement.remove_all()
            if left:
                log.info("removed %d placement groups of finished or lost actors", left)
        removed = _remove_torn_writes(out, [item.id for item in pending])
        if removed:
            log.info("removed %d temporary files of writes a lost actor did not finish", removed)


def _remove_torn_writes(out: str, ids: list[str]) -> int:
    """Delete `.<id>.*` temporaries that an actor killed mid-write left beside the outputs (writes are temp-then-
    rename, so the real outputs are whole; only these leftovers remain). Local outputs only: an object store's
    put leaves no temporary."""
    from .. import storage

    if not storage.is_local(out):
        return 0
    prefixes = tuple(f".{i}." for i in ids)
    removed = 0
    for folder in (out, storage.join(out, "records")):
        for name in storage.listdir(folder):
            if name.startswith(prefixes):
                storage.remove(storage.join(folder, name))
                removed += 1
    return removed


class _RenderDataContext:
    """Ray Data settings of a render, restored after the dataset captured them: no Ray Data progress bars (the
    render has its own), and no high-memory detector, which calls `ray_remote_args_fn` on its own (each call
    would create a placement group that no actor uses)."""

    def __enter__(self):
        from ray.data import DataContext

        self.ctx = DataContext.get_current()
        issues = getattr(self.ctx, "issue_detectors_config", None)  # Ray >= 2.50
        self.detectors = getattr(issues, "detectors", None)
        self.saved = (self.ctx.enable_progress_bars, list(self.detectors or ()))
        self.ctx.enable_progress_bars = False
        if self.detectors is not None:
            self.detectors[:] = [d for d in self.detectors if d.__name__ != "HighMemoryIssueDetector"]
        return self.restore

    def restore(self) -> None:
        self.ctx.enable_progress_bars, detectors = self.saved
        if self.detectors is not None:
            self.detectors[:] = detectors

    def __exit__(self, *exc) -> None:
        self.restore()


def _dataset(pending, out, model, config, generator_config, gpus, bounds):
    """The lazy dataset: one item per block, `map_batches` over the actor pool."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from .actor import ActorPlacement, HOST_CPUS, RenderActor

    rows = [item.to_row() for item in pending]
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
    compute = ActorPoolStrategy(min_size=bounds[0], max_size=bounds[1], max_tasks_in_flight_per_actor=1)
    kwargs = dict(fn_constructor_kwargs={"model": model, "generator_config": generator_config, "out": out},
                  batch_size=1, batch_format="numpy", compute=compute)
    if config.sp_degree == 1:
        return dataset.map_batches(RenderActor, num_cpus=config.cpus_per_actor, num_gpus=1 if gpus else 0,
                                   **kwargs), None
    placement = ActorPlacement(config.sp_degree, config.cpus_per_actor, bool(gpus), f"lbdist-render-{uuid.uuid4().hex[:8]}")
    with warnings.catch_warnings():
        # The way ray.data.llm reserves a placement group per actor; Ray marks the argument deprecated (for 2.64)
        # before its replacement (per-actor placement groups in map_batches) ships. lbdist pins ray < 2.61.
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
        return dataset.map_batches(RenderActor, num_cpus=HOST_CPUS, num_gpus=0, ray_remote_args_fn=placement,
                                   **kwargs), placement


def _consume(dataset, total, config, manifest, report, on_record) -> None:
    """Take records as items finish: manifest, progress, counts."""
    from .progress import Progress

    seen: set[str] = set()
    progress = Progress(total, log_every_s=config.log_every_s, bar=config.progress_bar)
    last_flush = time.monotonic()
    try:
        for row in dataset.iter_rows():
            record = json.loads(row["record"])
            if record["id"] in seen:
                report.duplicates += 1
                continue
            seen.add(record["id"])
            manifest.add(record)
            ok = record["status"] == "ok"
            report.rendered += ok
            report.failed += not ok
            if not ok:
                log.error("item %s (line %s) failed: %s", record["id"], record.get("line"), record.get("error"))
            progress.update(ok)
            if on_record is not None:
                on_record(record)
            if time.monotonic() - last_flush >= config.manifest_every_s:
                manifest.flush()
                last_flush = time.monotonic()
    finally:
        progress.close()
