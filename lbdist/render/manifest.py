"""The batch's manifest: one JSON line per item (and per bad line), rewritten atomically as items finish.

Layout under the output URI:

    <out>/<id>.mp4 | .gif | .png | .npy    each item's output (written atomically by the actor that rendered it)
    <out>/records/<id>.json                each item's record, written by its actor right after the output
    <out>/manifest.jsonl                   every record, in prompts-file line order, rewritten by the driver

The driver is the only writer of `manifest.jsonl` and replaces it whole (`lbdist.storage.write_text`: a local
rename or one object-store put), so a reader never sees a torn or half-written line. The per-item records
make the manifest's content survive a driver that dies: on the next run they are merged back in. An item
counts as finished when its record says `"status": "ok"` and its output exists; finished items are skipped.

A record: `id`, `line`, `prompt`, `seed`, `settings` (the resolved request's other fields), `output` (URI),
`timings` (seconds: generation stages, `save`, `item` wall time), `calls`, `status` ("ok", "error", "invalid"),
`error` (one line, or null), `worker` (host:pid), `finished` (UTC ISO time).
"""
from __future__ import annotations

import json
import logging
from typing import Iterable

from .. import storage

MANIFEST = "manifest.jsonl"
RECORDS = "records"
STATUSES = ("ok", "error", "invalid")
log = logging.getLogger("lbdist.render")


def record_path(out: str, item_id: str) -> str:
    return storage.join(out, RECORDS, f"{item_id}.json")


def write_record(out: str, record: dict) -> None:
    """Write one item's record atomically (called by the actor after the output is written)."""
    storage.write_text(record_path(out, record["id"]), json.dumps(record, sort_keys=True))


def _read_json(path: str) -> dict | None:
    try:
        data = json.loads(storage.read_text(path))
    except (OSError, ValueError) as exc:
        log.warning("skipping unreadable record %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) and data.get("id") else None


class Manifest:
    """The records of one output URI, keyed by item id; `flush()` rewrites `manifest.jsonl` atomically."""

    def __init__(self, out: str):
        self.out = out
        self.path = storage.join(out, MANIFEST)
        self.records: dict[str, dict] = {}
        self.invalid: list[dict] = []
        self.dirty = False

    @classmethod
    def load(cls, out: str) -> "Manifest":
        """The manifest at `out` (empty if none), with per-item records the last manifest did not hold merged in."""
        manifest = cls(out)
        if storage.exists(manifest.path):
            for number, line in enumerate(storage.read_text(manifest.path).splitlines(), start=1):
                try:
                    record = json.loads(line) if line.strip() else None
                except ValueError:
                    log.warning("%s:%d: not JSON, ignored", manifest.path, number)
                    continue
                if isinstance(record, dict) and record.get("id"):
                    manifest.records[record["id"]] = record
        for name in storage.listdir(storage.join(out, RECORDS)):
            item_id = name[:-len(".json")] if name.endswith(".json") else None
            known = manifest.records.get(item_id) if item_id else None
            if item_id and (known is None or known.get("status") != "ok"):
                record = _read_json(storage.join(out, RECORDS, name))
                if record is not None:
                    manifest.records[item_id] = record
                    manifest.dirty = True
        return manifest

    def finished(self, item_id: str) -> bool:
        """True when the item rendered before: its record is "ok" and its output is still there."""
        record = self.records.get(item_id)
        return bool(record and record.get("status") == "ok" and record.get("output")
                    and storage.exists(record["output"]))

    def add(self, record: dict) -> None:
        """Take a finished item's record (replacing an earlier run's record of the same id)."""
        if record.get("status") not in STATUSES or not record.get("id"):
            raise ValueError(f"a record needs an id and a status in {STATUSES}, got id {record.get('id')!r}, "
                             f"status {record.get('status')!r}")
        self.records[record["id"]] = record
        self.dirty = True

    def relocate(self, item_id: str, line: int) -> None:
        """A skipped item's line in this run's prompts file (lines move when the file is edited)."""
        if self.records[item_id].get("line") != line:
            self.records[item_id] = {**self.records[item_id], "line": line}
            self.dirty = True

    def set_invalid(self, errors: Iterable) -> None:
        """This run's bad lines (they replace those of earlier runs: the file may have been fixed)."""
        self.invalid = [{"id": None, "line": e.line, "status": "invalid", "error": e.message} for e in errors]
        self.dirty = True

    def lines(self) -> list[str]:
        rows = list(self.records.values()) + self.invalid
        rows.sort(key=lambda r: (r.get("line") or 0, r.get("id") or ""))
        return [json.dumps(r, sort_keys=True) for r in rows]

    def flush(self, force: bool = False) -> bool:
        """Rewrite manifest.jsonl (atomically) if anything changed; True if it was written."""
        if not (self.dirty or force):
            return False
        storage.write_text(self.path, "\n".join(self.lines()) + "\n")
        self.dirty = False
        return True

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for record in list(self.records.values()) + self.invalid:
            out[record.get("status", "error")] = out.get(record.get("status", "error"), 0) + 1
        return out
