"""`JobService`: the ingress's logic behind the HTTP routes (no Ray Serve here; `app.py` plugs the handle in).

- Accept: a request is validated (types, then `GenerationRequest`, then against the model's published facts and
  the adapter set's manifest) before anything is stored; over `max_queued_jobs` waiting jobs it is refused with
  429 and Retry-After. An accepted job is written as `queued` before the answer, so it survives anything after.
- Dispatch: each queued job is sent to the generator deployment (one handle call per job, routed by adapter-set
  id); Serve queues it until a replica is free. A call refused by Serve's own bound (BackPressureError) leaves
  the job queued and is sent again by the sweeper; a replica that dies under a job fails it with the reason, or
  queues it again (`retries`).
- Sweep: every second the non-terminal records are re-read (progress, queue length, metrics); an `in_progress`
  job without a heartbeat for `lease_s` is failed or re-queued, so no accepted job stays in progress forever; a
  queued job that nobody is running (after a restart) is dispatched again. Several ingress replicas share the
  store: each record names the ingress that dispatches it (`dispatcher`), ingresses write a heartbeat under
  `service/ingress/`, and a job whose ingress stopped beating is adopted by another; the queue bound is counted
  per ingress over the jobs it knows (its own, and the others' it sees when it rescans the store every 10 s).
- Answer: records are read from the store (GET is always current); outputs are streamed from it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import Any, Awaitable, Callable

from .. import storage
from ..generation.request import GenerationRequest
from .catalog import AdapterCatalog, ModelFacts, read_facts
from .jobs import CANCELLED, COMPLETED, FAILED, IN_PROGRESS, QUEUED, STATUSES, JobRecord, JobStore, new_job_id
from .schemas import (ApiError, ImageCreateRequest, JobError, VideoCreateRequest, VideoJob, VideoList, choose,
                      invalid, to_generation_request)
from .settings import ServeSettings, retry_after

log = logging.getLogger("lbdist.serve")
SWEEP_S = 1.0
RESCAN_S = 10.0
MAX_REQUEUES = 5


class IngressMetrics:
    """What the service reports (app.py passes Ray Serve metrics); no-ops by default."""

    def queue(self, waiting: int) -> None: ...
    def jobs(self, counts: dict[str, int]) -> None: ...
    def rejected(self, reason: str) -> None: ...


class JobService:
    """See the module docstring.

    dispatch(job_id, adapter_id) -> awaitable: runs the job on a generator replica (Serve handle call).
    image(request_dict, adapter_id) -> awaitable dict: one image (png bytes, timings, calls).
    classify(exc) -> "backpressure" | "replica_died" | None: what a failed handle call means.
    """

    def __init__(self, settings: ServeSettings, dispatch: Callable[[str, str | None], Awaitable[Any]],
                 image: Callable[[dict, str | None], Awaitable[dict]], classify: Callable[[BaseException], str | None],
                 metrics: IngressMetrics | None = None, ingress_id: str | None = None):
        self.settings, self._send, self._image, self._classify = settings, dispatch, image, classify
        self.metrics = metrics or IngressMetrics()
        self.store = JobStore(settings.storage_root)
        self.catalog = AdapterCatalog(settings.adapters)
        self.index: dict[str, JobRecord] = {}
        self.inflight: dict[str, asyncio.Task] = {}
        self.images_waiting = 0
        self.durations: deque[float] = deque(maxlen=32)
        self.facts: ModelFacts | None = None
        self.ingress_id = ingress_id or uuid.uuid4().hex[:12]
        self._tasks: list[asyncio.Task] = []

    # --- life cycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._rescan)
        self._tasks.append(asyncio.create_task(self._sweep_loop()))

    async def stop(self) -> None:
        for task in self._tasks + list(self.inflight.values()):
            task.cancel()
        beat = storage.join(self.settings.storage_root, "service", "ingress", self.ingress_id)
        await asyncio.to_thread(storage.remove, beat)  # its queued jobs are adopted at once, not after the lease

    def _rescan(self) -> None:
        for job_id in self.store.ids():
            if job_id not in self.index or not self.index[job_id].terminal:
                record = self.store.get(job_id)
                if record is not None:
                    self.index[job_id] = record

    async def _sweep_loop(self) -> None:
        last_scan = time.monotonic()
        while True:
            await asyncio.sleep(min(SWEEP_S, self.settings.heartbeat_s))
            try:
                if time.monotonic() - last_scan > RESCAN_S:
                    await asyncio.to_thread(self._rescan)
                    last_scan = time.monotonic()
                await self.sweep()
            except Exception:  # the sweeper must outlive a storage hiccup
                log.exception("lbdist serve: sweep failed")

    async def sweep(self) -> None:
        """Refresh non-terminal records; for the jobs this ingress dispatches (or whose ingress is gone): expire
        leases and dispatch queued jobs nobody is running; update the metrics."""
        live = await asyncio.to_thread(self._beat_and_list_ingresses)
        for job_id in [i for i, r in self.index.items() if not r.terminal]:
            record = await asyncio.to_thread(self.store.get, job_id)
            if record is None:
                continue
            self.index[job_id] = record
            if record.dispatcher not in (None, self.ingress_id) and record.dispatcher in live:
                continue  # another live ingress looks after it
            if record.lease_expired(self.settings.lease_s):
                record = await asyncio.to_thread(self._lost, job_id, "lease_expired", f"no heartbeat from replica "
                                                 f"{record.owner} for {self.settings.lease_s:g} s (it died or hung)")
                hung = self.inflight.pop(job_id, None)
                if hung is not None:
                    hung.cancel()  # the call to a hung replica; a queued-again job gets a fresh one below
            if record is not None and record.status == QUEUED and job_id not in self.inflight:
                if record.dispatcher != self.ingress_id:  # adopt an orphan (its ingress stopped or restarted)
                    record = record.update(dispatcher=self.ingress_id)
                    await asyncio.to_thread(self.store.put, record)
                self._dispatch(record)
        counts = {s: 0 for s in STATUSES}
        for record in self.index.values():
            counts[record.status] += 1
        self.metrics.jobs(counts)
        self.metrics.queue(self.waiting())

    def _beat_and_list_ingresses(self) -> set[str]:
        """Write this ingress's heartbeat; return the ingresses that beat within the lease (this one included)."""
        folder = storage.join(self.settings.storage_root, "service", "ingress")
        now = time.time()
        storage.write_text(storage.join(folder, self.ingress_id), json.dumps({"at": now}))
        live = {self.ingress_id}
        for name in storage.listdir(folder):
            try:
                if now - json.loads(storage.read_text(storage.join(folder, name)))["at"] <= self.settings.lease_s:
                    live.add(name)
            except (OSError, ValueError, KeyError):
                continue
        return live

    # --- dispatch ---------------------------------------------------------------------------------------------
    def _dispatch(self, record: JobRecord) -> None:
        self.inflight[record.id] = asyncio.create_task(self._watch(record.id, record.request.get("adapters")))

    async def _watch(self, job_id: str, adapter_id: str | None) -> None:
        try:
            await self._send(job_id, adapter_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (classified below)
            kind = self._classify(exc)
            if kind != "backpressure":  # backpressure: still queued; the sweeper sends it again
                code = "replica_died" if kind == "replica_died" else "dispatch_failed"
                await asyncio.to_thread(self._lost, job_id, code, f"{type(exc).__name__}: {_first_line(exc)}")
        finally:
            if self.inflight.get(job_id) is asyncio.current_task():
                del self.inflight[job_id]
        record = await asyncio.to_thread(self.store.get, job_id)
        if record is not None:
            self.index[job_id] = record
            if record.status == COMPLETED and record.started_at and record.finished_at:
                self.durations.append(record.finished_at - record.started_at)

    def _lost(self, job_id: str, code: str, message: str) -> JobRecord | None:
        """A job's replica is gone: queue it again (retries left, or it never started) or fail it."""
        record = self.store.get(job_id)
        if record is None or record.terminal:
            return record
        never_started = record.status == QUEUED
        if (never_started or record.attempts <= self.settings.retries) and len(record.notes) < MAX_REQUEUES:
            note = f"attempt {record.attempts}: {code}: {message}" if not never_started else f"dispatch: {message}"
            record = record.update(status=QUEUED, owner=None, heartbeat_at=None, steps_done=0,
                                   notes=record.notes + (note,))
            log.warning("lbdist serve: job %s queued again (%s)", job_id, note)
        else:
            record = record.finish(FAILED, error={"code": code, "message": message})
        self.store.put(record)
        self.index[job_id] = record
        return record

    def waiting(self) -> int:
        return sum(1 for r in self.index.values() if r.status == QUEUED) + self.images_waiting

    def _admit(self) -> None:
        waiting = self.waiting()
        if waiting >= self.settings.max_queued_jobs:
            running = sum(1 for r in self.index.values() if r.status == IN_PROGRESS)
            mean = sum(self.durations) / len(self.durations) if self.durations else None
            after = retry_after(waiting, running, mean)
            self.metrics.rejected("queue_full")
            raise ApiError(429, "queue_full", f"{waiting} jobs are waiting (max_queued_jobs="
                           f"{self.settings.max_queued_jobs}); retry after {after} s", None,
                           {"Retry-After": str(after)})

    # --- validation -------------------------------------------------------------------------------------------
    async def model_facts(self) -> ModelFacts:
        if self.facts is None:
            self.facts = await asyncio.to_thread(read_facts, self.settings.storage_root, self.settings.model)
        if self.facts is None:
            raise ApiError(503, "model_loading", f"model {self.settings.served_name!r} is still loading on the "
                           "generator replicas; retry shortly", None, {"Retry-After": "10"})
        return self.facts

    def _resolve(self, body, facts: ModelFacts, output_format: str | None = None) -> GenerationRequest:
        if body.model is not None and body.model != self.settings.served_name:
            raise ApiError(400, "unknown_model", f"model {body.model!r} is not served here; this service serves "
                           f"{self.settings.served_name!r}", "model")
        request = to_generation_request(body, default_schedule=self.settings.schedule,
                                        default_adapters=self.settings.default_adapters, output_format=output_format)
        if request.adapters is not None:
            self.catalog.known(request.adapters)
        try:
            request = request.resolve(facts.info)
        except ValueError as exc:
            raise invalid(exc, body.size, request.schedule) from None
        self.catalog.check(request, facts)
        return request

    # --- endpoints --------------------------------------------------------------------------------------------
    async def create_video(self, body: VideoCreateRequest) -> VideoJob:
        facts = await self.model_facts()
        if not facts.info.is_video:
            raise ApiError(400, "wrong_endpoint", f"{self.settings.served_name!r} ({facts.info.family}) makes images: "
                           "use POST /v1/images/generations", "model")
        request = await asyncio.to_thread(self._resolve, body, facts)
        self._admit()
        record = JobRecord(id=new_job_id(), model=self.settings.served_name, request=request.to_dict(),
                           steps_total=request.num_inference_steps, dispatcher=self.ingress_id)
        await asyncio.to_thread(self.store.put, record)
        self.index[record.id] = record
        self._dispatch(record)
        return video_view(record)

    async def get_video(self, job_id: str) -> VideoJob:
        return video_view(await self._record(job_id))

    async def _record(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.store.get, job_id)
        if record is None:
            raise ApiError(404, "not_found", f"no video job {job_id!r}", "video_id")
        self.index[job_id] = record
        return record

    async def list_videos(self, limit: int = 20, after: str | None = None, order: str = "desc") -> VideoList:
        choose("order", order, ("asc", "desc"))
        if type(limit) is not int or not 1 <= limit <= 100:
            raise ApiError(400, "invalid_value", f"limit must be an integer in 1..100, got {limit!r}", "limit")
        ids = sorted(self.index, reverse=order == "desc")
        if after is not None:
            if after not in self.index:
                raise ApiError(404, "not_found", f"after: no video job {after!r}", "after")
            ids = ids[ids.index(after) + 1:]
        page = [video_view(self.index[i]) for i in ids[:limit]]
        return VideoList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                         has_more=len(ids) > limit)

    async def cancel_video(self, job_id: str, wait_s: float = 5.0) -> VideoJob:
        """Cancel a queued job at once, a running one at its next step boundary (waits up to wait_s for it)."""
        record = await self._record(job_id)
        if record.status in (COMPLETED, FAILED):
            raise ApiError(409, "job_finished", f"video job {job_id} is already {record.status}; nothing to cancel",
                           "video_id")
        if record.status == CANCELLED:
            return video_view(record)
        await asyncio.to_thread(self.store.request_cancel, job_id)
        if record.status == QUEUED:
            record = record.finish(CANCELLED, error={"code": "cancelled", "message": "cancelled while queued"})
            await asyncio.to_thread(self.store.put, record)
            self.index[job_id] = record
            return video_view(record)
        deadline = time.monotonic() + min(wait_s, self.settings.lease_s)
        while time.monotonic() < deadline and not record.terminal:
            await asyncio.sleep(0.05)
            record = await self._record(job_id)
        return video_view(record)

    async def content(self, job_id: str) -> tuple[str, str, int]:
        """(path, content type, bytes) of a completed job's output."""
        record = await self._record(job_id)
        if record.status != COMPLETED or not record.result:
            raise ApiError(409, "video_not_ready", f"video job {job_id} is {record.status}; content exists once it "
                           "is completed", "video_id")
        path = record.result["path"]
        try:
            size = await asyncio.to_thread(self.store.size, path)
        except FileNotFoundError:
            raise ApiError(404, "content_missing", f"the output of {job_id} is gone from storage ({path})",
                           "video_id") from None
        return path, record.result["content_type"], size

    async def create_image(self, body: ImageCreateRequest) -> tuple[dict, str]:
        """One image: (generator answer with png bytes, response format)."""
        facts = await self.model_facts()
        if facts.info.is_video:
            raise ApiError(400, "wrong_endpoint", f"{self.settings.served_name!r} ({facts.info.family}) makes videos: "
                           "use POST /v1/videos", "model")
        if body.n != 1:
            raise ApiError(400, "invalid_value", f"n must be 1 (one image per request), got {body.n}", "n")
        fmt = choose("response_format", body.response_format, ("b64_json", "png"))
        request = await asyncio.to_thread(self._resolve, body, facts, "png")
        self._admit()
        self.images_waiting += 1
        try:
            return await self._image(request.to_dict(), request.adapters), fmt
        except Exception as exc:  # noqa: BLE001
            kind = self._classify(exc)
            if kind in ("backpressure", "replica_died"):
                self.metrics.rejected(kind)
                raise ApiError(503, "overloaded" if kind == "backpressure" else "replica_died",
                               f"the generator could not take the request ({_first_line(exc)}); retry shortly",
                               None, {"Retry-After": "5"}) from None
            raise
        finally:
            self.images_waiting -= 1

    async def health(self) -> dict:
        facts = self.facts or await asyncio.to_thread(read_facts, self.settings.storage_root, self.settings.model)
        counts = {s: sum(1 for r in self.index.values() if r.status == s) for s in STATUSES}
        out = {"status": "ok" if facts else "loading", "model": self.settings.served_name, "queue": self.waiting(),
               "max_queued_jobs": self.settings.max_queued_jobs, "jobs": counts, "adapters": self.catalog.ids(),
               "schedule": self.settings.schedule, "default_adapters": self.settings.default_adapters}
        if facts:
            info = facts.info
            out.update(family=info.family, kind="video" if info.is_video else "image",
                       pixel_multiple=info.pixel_multiple, frame_rule=info.frame_rule, defaults=dict(info.defaults))
        return out


def video_view(record: JobRecord, now: float | None = None) -> VideoJob:
    """The API's view of a record: progress in percent and steps, elapsed time, ETA."""
    now = now or time.time()
    req = record.request
    total = record.steps_total or int(req.get("num_inference_steps") or 0)
    done = total if record.status == COMPLETED else min(record.steps_done, total)
    end = record.finished_at if record.terminal else now
    elapsed = round(end - record.started_at, 3) if record.started_at and end else None
    eta = round(elapsed / done * (total - done), 3) if record.status == IN_PROGRESS and done and elapsed else None
    frames, fps = req.get("num_frames"), req.get("fps") or 16
    result = None
    if record.result:
        result = {k: v for k, v in record.result.items() if k != "path"}
        result["url"] = f"/v1/videos/{record.id}/content"
    error = None
    if record.error:
        error = JobError(code=record.error.get("code", "error"), message=record.error.get("message", ""))
    return VideoJob(id=record.id, model=record.model, status=record.status,
                    progress=int(100 * done / total) if total else 0, steps_done=done, steps_total=total,
                    elapsed_s=elapsed, eta_s=eta, created_at=record.created_at, started_at=record.started_at,
                    completed_at=record.finished_at, size=f"{req.get('width')}x{req.get('height')}",
                    num_frames=frames, seconds=f"{frames / fps:.2f}" if frames else None,
                    output_format=req.get("output_format") or "mp4", attempts=record.attempts, request=req,
                    result=result, error=error)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
