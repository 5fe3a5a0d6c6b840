"""Where a calibration run lives in storage, and the checks made before it starts.

    <output>/<run_id>/run.json                         settings that shape the result (a resubmission must match)
    <output>/<run_id>/pairs/manifest.json              what was recorded (model, schedule, call arguments, bridges)
    <output>/<run_id>/pairs/index/prompt0003.json      one prompt's shards with sha256 and size (its commit point)
    <output>/<run_id>/pairs/step005_cond/prompt0003.safetensors   one shard per (bridge, prompt), as recorded
    <output>/<run_id>/bridges/step005_cond.{safetensors,json}      each bridge as soon as it finished training
    <output>/<run_id>/train/                            Ray Train runs (one per group of bridges) and checkpoints
    <output>/<run_id>/adapters/                         the adapter set (safetensors + lbdist_adapters.json)

Every path goes through `lbdist.storage` (local paths and fsspec URIs alike); every write is atomic.
"""
from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass

from .. import storage
from ..calibrate.resume import settings_differences

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run (`root` = `<output>/<run_id>`, absolute for local outputs)."""

    root: str

    @classmethod
    def of(cls, output: str, run_id: str) -> "RunLayout":
        base = output if storage.is_uri(output) else str(storage.local_path(output).absolute())
        return cls(storage.join(base, run_id))

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def pairs(self) -> str:
        return self.path("pairs")

    def shard(self, step: int, branch: str, prompt: int) -> str:
        return self.path("pairs", bridge_name(step, branch), f"prompt{prompt:04d}.safetensors")

    def index(self, prompt: int) -> str:
        return self.path("pairs", "index", f"prompt{prompt:04d}.json")

    def bridge_file(self, step: int, branch: str, suffix: str) -> str:
        return self.path("bridges", f"{bridge_name(step, branch)}.{suffix}")

    @property
    def train(self) -> str:
        return self.path("train")

    @property
    def adapters(self) -> str:
        return self.path("adapters")


def bridge_name(step: int, branch: str) -> str:
    return f"step{step:03d}_{branch}"


def read_json(path: str) -> dict | None:
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def write_json(path: str, value) -> None:
    storage.write_text(path, json.dumps(value, indent=2, sort_keys=True))


def check_storage(output: str) -> None:
    """Refuse an output that cannot be written and read back (one line naming it and the cause)."""
    probe = storage.join(output if storage.is_uri(output) else str(storage.local_path(output).absolute()),
                         f".lbdist-probe-{uuid.uuid4().hex[:12]}")
    try:
        storage.write_bytes(probe, b"ok")
        if storage.read_bytes(probe) != b"ok":
            raise OSError("what was written did not read back")
        storage.remove(probe)
    except Exception as exc:  # drivers raise anything (OSError, botocore, gcsfs): one line for all
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"output {output!r} is not reachable for writing ({type(exc).__name__}: "
                         f"{lines[0][:200] if lines else ''})") from exc


def check_run(layout: RunLayout, settings: dict, run_id: str) -> dict | None:
    """The earlier run's record if `layout` holds one with the same settings; None for a new run; ValueError
    naming the differences if the run id was used with other result-shaping arguments."""
    old = read_json(layout.path(RUN_FILE))
    if old is None:
        return None
    differences = settings_differences(old.get("settings", {}), json.loads(json.dumps(settings)))
    if differences:
        raise ValueError(f"run id {run_id!r} was started in {layout.root} with other arguments: "
                         f"{'; '.join(differences)}. Use another --run-id, or --restart to start this one over")
    return old


def clear_run(layout: RunLayout) -> None:
    """Remove everything under the run's root (restart)."""
    if storage.is_local(layout.root):
        import shutil

        path = storage.local_path(layout.root)
        if path.exists():
            shutil.rmtree(path)
        return
    fs, inner = storage.filesystem(layout.root)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


def list_names(path: str, suffix: str) -> list[str]:
    return [n for n in storage.listdir(path) if n.endswith(suffix) and not n.startswith(".")]


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))
