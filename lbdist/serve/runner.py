"""`ReplicaWorker`: what one generator replica does, apart from Ray Serve itself (which lives in `app.py`).

It owns one `lbdist.Generator` (one device, or a worker group of `sp_degree` ranks), publishes the model's facts
for the ingress, and runs jobs from the `JobStore`:

1. claim: the record must be `queued` (anything else: finished, or held by another replica); it becomes
   `in_progress` under this replica's owner token. A job cancelled while queued is closed here as `cancelled`.
2. run: `Generator.generate` in a thread with a progress callback (steps, step latency) and a cancel callback read
   at every step boundary (the job's cancel marker, or a lost lease); a worker group stops every rank at the same
   boundary. A heartbeat rewrites the record every `progress_s` (1 s; or every lease_s / 5 if shorter) with the progress, and checks it still
   names this replica (if the ingress re-queued or failed it, the generation is cancelled and nothing is written).
3. finish: the output is written first, then the record (`completed` with timings and calls; `cancelled` naming
   the step; `failed` with the error).

Adapter sets are made resident through `preload` / `evict` (Serve's `@serve.multiplexed` calls them) and counted
in `loads`. `check_health` runs a tiny generation (every rank of a group) at most every `probe_interval_s` when
idle, and checks the running job's heartbeat otherwise. Nothing here imports Ray.
"""
from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from ..generation.request import GenerationCancelled, GenerationRequest
from .catalog import ModelFacts, publish_facts
from .jobs import CANCELLED, COMPLETED, CONTENT_TYPES, FAILED, IN_PROGRESS, QUEUED, JobRecord, JobStore
from .settings import ServeSettings, generator_config_kwargs



class NullMetrics:
    """The metrics interface a worker reports to (app.py passes Ray Serve metrics)."""

    def step(self, seconds: float) -> None: ...
    def generation(self, seconds: float, kind: str) -> None: ...
    def calls(self, calls: dict) -> None: ...
    def adapter_load(self, adapter_id: str) -> None: ...
    def finished(self, status: str) -> None: ...


@dataclass
class _Run:
    """State of the running job, shared by the generation thread and the heartbeat."""

    record: JobRecord
    done: int = 0
    last_step: float = field(default_factory=time.time)
    step_ends: list = field(default_factory=list)
    lost: str | None = None          # why this replica no longer owns the job
    cancel_at: float | None = None   # when the client asked to cancel
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReplicaWorker:
    """One replica's generator and job runner (see the module docstring)."""

    def __init__(self, settings: ServeSettings, replica: str, gpus: bool, metrics=None):
        from ..bridge.resident import CacheLimits
        from ..generation.generator import Generator, GeneratorConfig

        self.settings, self.replica, self.metrics = settings, replica, metrics or NullMetrics()
        self.store = JobStore(settings.storage_root)
        config = GeneratorConfig(cache=CacheLimits(max_sets=settings.max_adapters_per_replica + 1),
                                 **generator_config_kwargs(settings, gpus))
        self.generator = Generator(settings.model_reference(), config)
        self.lock = threading.Lock()       # one generation / probe / adapter load at a time
        self.loads: Counter = Counter()    # adapter-set loads by id (injections)
        self._tokens: dict[str, str] = {}  # adapter id -> token of the resident set object
        self.run: _Run | None = None
        self.last_probe = time.time()      # loading the model was the first probe
        facts = self.generator.transformer_facts()
        self.facts = ModelFacts(info=self.generator.info, transformer_classes=tuple(facts["transformer_classes"]),
                                config_digest=facts["config_digest"], model=settings.model, replica=replica)
        publish_facts(settings.storage_root, self.facts)

    # --- adapter sets --------------------------------------------------------------------------------------
    def preload(self, adapter_id: str) -> str:
        """Make a configured adapter set resident (read from its directory, URI or Hub id); returns its token."""
        with self.lock:
            injected = self.generator.preload_adapters(adapter_id, self.settings.adapters[adapter_id])
        if injected:
            self.loads[adapter_id] += 1
            self.metrics.adapter_load(adapter_id)
        token = uuid.uuid4().hex
        self._tokens[adapter_id] = token
        return token

    def evict(self, adapter_id: str, token: str) -> None:
        """Drop a resident set, unless it was loaded again since `token` was handed out."""
        if self._tokens.get(adapter_id) != token:
            return
        del self._tokens[adapter_id]
        with self.lock:
            self.generator.evict_adapters(adapter_id)

    def stats(self) -> dict:
        facts = self.generator.transformer_facts()
        return {"replica": self.replica, "adapter_loads": dict(self.loads), "resident": sorted(self._tokens),
                "adapter_injections": facts.get("adapter_injections"), "running": self.run and self.run.record.id}

    # --- jobs ------------------------------------------------------------------------------------------------
    async def run_job(self, job_id: str) -> dict:
        """Claim, run and record one job; returns a short summary (status and where it stopped)."""
        record = await asyncio.to_thread(self._claim, job_id)
        if record is None:
            return {"id": job_id, "skipped": True}
        run = self.run = _Run(record)
        beat = asyncio.create_task(self._heartbeat(run))
        try:
            status = await asyncio.to_thread(self._execute, run)
        except asyncio.CancelledError:  # the caller gave up on this call: stop the generation at the next step
            run.lost = "cancelled by the caller"
            raise
        finally:
            beat.cancel()
            self.run = None
        self.metrics.finished(status)
        return {"id": job_id, "status": status, "steps_done": run.done}

    def _claim(self, job_id: str) -> JobRecord | None:
        record = self.store.get(job_id)
        if record is None or record.status != QUEUED:
            return None  # finished, or another replica holds it (a duplicate dispatch)
        if self.store.cancel_requested(job_id) is not None:
            self.store.put(record.finish(CANCELLED, error={"code": "cancelled", "message": "cancelled while queued"}))
            return None
        owner = f"{self.replica}#{record.attempts + 1}#{uuid.uuid4().hex[:8]}"
        now = time.time()
        record = record.update(status=IN_PROGRESS, owner=owner, attempts=record.attempts + 1, started_at=now,
                               heartbeat_at=now, steps_done=0, steps_total=record.request["num_inference_steps"])
        self.store.put(record)
        return record

    def _execute(self, run: _Run) -> str:
        record = run.record
        request = GenerationRequest.from_dict(record.request)
        t0 = time.time()
        try:
            with self.lock:
                result = self.generator.generate(request, progress=lambda d, t: self._progress(run, d),
                                                 cancel=lambda: self._cancel(run))
            self.metrics.generation(time.time() - t0, "video")
            self.metrics.calls(result.calls)
            fmt = result.request.output_format
            path = self.store.output_path(record.id, fmt)
            result.save(path)
            summary = {"path": path, "content_type": CONTENT_TYPES.get(fmt, "application/octet-stream"),
                       "bytes": self.store.size(path), "timings": result.timings, "calls": result.calls,
                       "steps": result.summary(), "replica": self.replica}
            return self._final(run, COMPLETED, result=summary)
        except GenerationCancelled as exc:
            if run.lost:
                return run.lost
            after = sum(1 for t in run.step_ends if run.cancel_at is not None and t > run.cancel_at)
            return self._final(run, CANCELLED, error={
                "code": "cancelled", "message": f"cancelled after step {exc.step} of {exc.total}",
                "step": exc.step, "steps_after_request": after})
        except Exception as exc:  # the job fails; the replica stays up for the next one
            text = str(exc).strip().splitlines()
            return self._final(run, FAILED, error={"code": "generation_failed",
                                                   "message": f"{type(exc).__name__}: {text[0] if text else ''}"})

    def _progress(self, run: _Run, done: int) -> None:
        now = time.time()
        self.metrics.step(now - run.last_step)
        run.done, run.last_step = done, now
        run.step_ends.append(now)

    def _cancel(self, run: _Run) -> bool:
        if run.lost:
            return True
        if run.cancel_at is None:
            run.cancel_at = self.store.cancel_requested(run.record.id)
        return run.cancel_at is not None

    def _final(self, run: _Run, status: str, **outcome) -> str:
        with run.lock:
            run.finished = True
            current = self.store.get(run.record.id)
            if current is None or current.owner != run.record.owner or current.terminal:
                return run.lost or "lost"  # the ingress failed or re-queued it meanwhile: its decision stands
            self.store.put(current.update(steps_done=run.done).finish(status, **outcome))
        return status

    async def _heartbeat(self, run: _Run) -> None:
        while True:
            await asyncio.sleep(min(self.settings.progress_s, self.settings.heartbeat_s))
            await asyncio.to_thread(self._beat, run)

    def _beat(self, run: _Run) -> None:
        with run.lock:
            if run.finished:
                return
            current = self.store.get(run.record.id)
            if current is None or current.owner != run.record.owner or current.terminal:
                run.lost = f"lost the job ({'record gone' if current is None else current.status})"
                return
            self.store.put(current.update(steps_done=run.done, heartbeat_at=time.time()))

    # --- images ------------------------------------------------------------------------------------------
    def generate_image(self, request: dict) -> dict:
        """One image, synchronously: PNG bytes, timings and calls (blocking: call it from a thread)."""
        from PIL import Image

        t0 = time.time()
        with self.lock:
            result = self.generator.generate(GenerationRequest.from_dict(request),
                                             progress=lambda d, t: self._image_step())
        self.metrics.generation(time.time() - t0, "image")
        self.metrics.calls(result.calls)
        buffer = io.BytesIO()
        Image.fromarray(result.uint8()[0]).save(buffer, format="PNG")
        return {"png": buffer.getvalue(), "timings": result.timings, "calls": result.calls}

    def _image_step(self) -> None:
        now = time.time()
        self.metrics.step(now - getattr(self, "_last_image_step", now))
        self._last_image_step = now

    # --- health ------------------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Raise if the replica cannot generate (blocking: call it from a thread). See the module docstring."""
        run = self.run
        if run is not None:
            idle = time.time() - run.last_step
            if idle > self.settings.lease_s:
                raise RuntimeError(f"job {run.record.id}: no denoising step for {idle:.0f} s (lease "
                                   f"{self.settings.lease_s:g} s); the device or a rank is stuck")
            return
        if time.time() - self.last_probe < self.settings.probe_interval_s or not self.lock.acquire(blocking=False):
            return
        try:
            self.generator.generate(self.probe_request())
            self.last_probe = time.time()
        finally:
            self.lock.release()

    def probe_request(self) -> GenerationRequest:
        """The smallest generation the model (and the group's sequence-parallel split) accepts: one step."""
        info = self.generator.info
        side = info.pixel_multiple * self.settings.sp_degree
        return GenerationRequest("health probe", height=side, width=side, num_inference_steps=1, output_format="np",
                                 num_frames=1 + info.frame_rule if info.is_video else None)

    def close(self) -> None:
        self.generator.close()

