"""Durable jobs: `JobRecord` (one video job) and `JobStore` (records and outputs on the lbdist storage seam).

Layout under the store's root (a local directory, `memory://` in tests, `s3://` / `gs://` in a cluster):

    jobs/<id>/job.json        the record, rewritten atomically at every change (never a torn file)
    jobs/<id>/output.mp4      the finished video (or .gif), written atomically before the record says completed
    jobs/<id>/cancel          present once a client asked to cancel (the running replica polls it every step)

The record lives outside every replica, so a restarted application lists and serves earlier jobs, and a job whose
replica died is found by its stale heartbeat (`lease_expired`). Writers: the ingress creates a record, cancels a
queued one and fails or re-queues one whose lease expired; the replica that claimed a job (its `owner` token)
writes everything else and stops writing, cancelling its generation, once the record names another owner.
Plain data and storage calls only (no Ray, no torch).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterator

from .. import storage

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
ID_RE = re.compile(r"video_[0-9a-f]{24}")
CONTENT_TYPES = {"mp4": "video/mp4", "gif": "image/gif", "png": "image/png"}
CHUNK = 1 << 20


_last_us = 0


def new_job_id() -> str:
    """`video_` + 14 hex digits of microseconds (strictly rising in this process) + 10 random: ids sort by
    creation time."""
    global _last_us
    _last_us = max(time.time_ns() // 1000, _last_us + 1)
    return f"video_{_last_us:014x}{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class JobRecord:
    """Everything known about one job.

    id: `video_...`; model: served model name; request: the resolved `GenerationRequest` as a dict.
    status: queued | in_progress | completed | failed | cancelled.
    created_at / started_at / finished_at: unix times. steps_done / steps_total: denoising progress.
    heartbeat_at: last sign of life of the replica running it (the lease is measured from it).
    owner: claim token of that replica (`<replica>#<attempt>#<nonce>`); attempts: replicas that started it.
    result: once completed: `path`, `content_type`, `bytes`, `timings`, `calls`, `steps`, `replica`.
    error: `{"code", "message"}` once failed (or cancelled: where it stopped). notes: earlier attempts' fates.
    dispatcher: the ingress replica that sends the job to the generators (another adopts it if that one stops).
    """

    id: str
    model: str
    request: dict
    status: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    steps_done: int = 0
    steps_total: int = 0
    heartbeat_at: float | None = None
    owner: str | None = None
    attempts: int = 0
    result: dict | None = None
    error: dict | None = None
    notes: tuple[str, ...] = ()
    dispatcher: str | None = None

    def __post_init__(self):
        if not ID_RE.fullmatch(self.id):
            raise ValueError(f"job id {self.id!r} is not of the form video_<24 hex digits>")
        if self.status not in STATUSES:
            raise ValueError(f"job status must be one of {STATUSES}, got {self.status!r}")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def lease_expired(self, lease_s: float, now: float | None = None) -> bool:
        """A running job whose replica gave no sign of life for `lease_s` seconds."""
        if self.status != IN_PROGRESS:
            return False
        last = self.heartbeat_at or self.started_at or self.created_at
        return (now or time.time()) - last > lease_s

    def update(self, **changes) -> "JobRecord":
        return replace(self, **changes)

    def finish(self, status: str, *, error: dict | None = None, result: dict | None = None) -> "JobRecord":
        return replace(self, status=status, finished_at=time.time(), error=error, result=result)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "JobRecord":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # records written by a newer lbdist stay readable
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)


class JobStore:
    """Job records and outputs under `root` (see the module docstring for the layout)."""

    def __init__(self, root: str):
        self.root = str(root)
        self.jobs = storage.join(self.root, "jobs")

    def _dir(self, job_id: str) -> str:
        if not isinstance(job_id, str) or not ID_RE.fullmatch(job_id):
            raise KeyError(job_id)  # never build a path from an unchecked id
        return storage.join(self.jobs, job_id)

    def output_path(self, job_id: str, fmt: str) -> str:
        return storage.join(self._dir(job_id), f"output.{fmt}")

    def put(self, record: JobRecord) -> JobRecord:
        storage.write_text(storage.join(self._dir(record.id), "job.json"), record.to_json())
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None for an unknown (or malformed) id."""
        try:
            path = storage.join(self._dir(job_id), "job.json")
        except KeyError:
            return None
        try:
            return JobRecord.from_json(storage.read_text(path))
        except (FileNotFoundError, KeyError):
            return None

    def ids(self) -> list[str]:
        """Every job id, oldest first."""
        return [name for name in storage.listdir(self.jobs) if ID_RE.fullmatch(name)]

    def request_cancel(self, job_id: str) -> float:
        at = time.time()
        storage.write_text(storage.join(self._dir(job_id), "cancel"), json.dumps({"requested_at": at}))
        return at

    def cancel_requested(self, job_id: str) -> float | None:
        """When a cancel was recorded in the store (unix time), or None. Cheap: one `exists` per call on a local disk.

        On a local disk that is the marker file's modification time (when it was written, just before it became
        visible), not the ingress's clock before the write: replicas measure "steps after the request" from the
        moment they could have seen it.
        """
        path = storage.join(self._dir(job_id), "cancel")
        if not storage.exists(path):
            return None
        try:
            at = float(json.loads(storage.read_text(path))["requested_at"])
        except (FileNotFoundError, ValueError, KeyError):
            return time.time()
        if storage.is_local(path):
            try:
                at = max(at, storage.local_path(path).stat().st_mtime)
            except FileNotFoundError:
                pass
        return at

    def read_chunks(self, path: str, chunk: int = CHUNK) -> Iterator[bytes]:
        """The bytes of an output, in chunks (streamed: a long video never sits whole in the ingress)."""
        if storage.is_local(path):
            opened = open(storage.local_path(path), "rb")
        else:
            fs, inner = storage.filesystem(path)
            opened = fs.open(inner, "rb")
        with opened as f:
            while data := f.read(chunk):
                yield data

    def size(self, path: str) -> int:
        if storage.is_local(path):
            return os.path.getsize(storage.local_path(path))
        fs, inner = storage.filesystem(path)
        return int(fs.size(inner))
