"""What runs on the actors of a batch render: one `Generator` per actor, one item per call, and the placement
groups through which a sequence-parallel actor reserves its GPUs.

`RenderActor` is the callable class handed to Ray Data's `map_batches`: it builds its `Generator` once, then for
each item resolves the request against the model, generates, writes the output and the item's record (both
atomically) and returns the record. It never raises for an item: a bad request or a failed generation becomes an
"error" record and the batch goes on. A rank of its worker group that dies fails only the item in flight; the
group is rebuilt in the same placement group for the next item.

`ActorPlacement` is how an actor of SP degree N > 1 gets N GPUs, the way `ray.data.llm` gives a tensor-parallel
vLLM engine its GPUs: Ray Data calls it before starting each actor; it creates a placement group (bundle 0 for
the actor itself, bundles 1..N one GPU each, STRICT_PACK: one node) and schedules the actor into bundle 0 with
`placement_group_capture_child_tasks`, so the `WorkerGroup` that the actor's `Generator` starts finds the group
as its current one and puts its ranks there. The pool's actors are GPU-less to Ray Data; the cluster sees the
pending placement groups (the autoscaler adds nodes for them) and the pool grows as they are placed. An actor that
Ray restarts keeps its placement group; one that exits normally removes it; the driver removes what is left
(`remove_all`) when the batch ends.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import time
import traceback
from datetime import datetime, timezone

from .. import storage
from .manifest import write_record
from .prompts import RenderItem

log = logging.getLogger("lbdist.render")
HOST_CPUS = 0.1  # the actor's own share of its placement group (bundle 0): it only drives its ranks


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def save_result(result, out: str, item_id: str) -> str:
    """Write a result to `<out>/<id>.<format>` atomically; returns the URI."""
    fmt = result.request.output_format
    if fmt == "np":
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, result.frames)
        return storage.write_bytes(storage.join(out, f"{item_id}.npy"), buffer.getvalue())
    return result.save(storage.join(out, f"{item_id}.{fmt}"))


def render_item(generator, item: RenderItem, out: str, worker: str = "") -> dict:
    """Render one item with a `Generator` and write its output and record; returns the record (never raises for
    a bad request or a failed generation: the record says "error" and why)."""
    started = time.perf_counter()
    request = item.request
    record = {"id": item.id, "line": item.line, "prompt": request.prompt, "seed": request.seed, "output": None,
              "timings": {}, "calls": {}, "status": "error", "error": None, "worker": worker}
    try:
        request = request.resolve(generator.info)
        result = generator.generate(request)
        saving = time.perf_counter()
        record["output"] = save_result(result, out, item.id)
        record["timings"] = {**{k: round(v, 4) for k, v in result.timings.items()},
                             "save": round(time.perf_counter() - saving, 4)}
        record.update(calls=dict(result.calls), status="ok")
    except Exception as exc:  # noqa: BLE001 - one item's failure is recorded; the batch goes on
        record["error"] = _first_line(exc)
        log.warning("item %s (line %d) failed: %s\n%s", item.id, item.line, record["error"], traceback.format_exc())
        _repair(generator, exc)
    settings = request.to_dict()
    for key in ("prompt", "seed"):
        settings.pop(key)
    record["settings"] = settings
    record["timings"]["item"] = round(time.perf_counter() - started, 4)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        write_record(out, record)
    except Exception as exc:  # noqa: BLE001 - the driver still gets the record and writes the manifest
        record.update(status="error", error=f"could not write the item's record: {_first_line(exc)}")
    return record


def _repair(generator, exc: BaseException) -> None:
    """After a rank of the generator's worker group died, rebuild the group (same placement group) for the next
    item. The failed item is not retried here: a request that kills a rank would do it again."""
    from ..parallel.config import GroupBrokenError, WorkerDiedError

    group = getattr(generator, "group", None)
    if group is not None and isinstance(exc, (WorkerDiedError, GroupBrokenError)):
        log.warning("rebuilding the worker group after: %s", _first_line(exc))
        group.restart()


class RenderActor:
    """The `map_batches` callable class: one Generator per actor; each call renders a batch of items.

    Args:
        model: a model reference or a `PipelineFactory` (as `Generator` takes it).
        generator_config: the actor's `GeneratorConfig`.
        out: the output URI.
    """

    def __init__(self, model, generator_config, out: str):
        from ..generation.generator import Generator

        self.out = out
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.generator = Generator(model, generator_config)

    def __call__(self, batch: dict) -> dict:
        import json

        import numpy as np

        records = [render_item(self.generator, RenderItem.from_row(text), self.out, self.worker)
                   for text in batch["item"]]
        return {"record": np.array([json.dumps(r, sort_keys=True) for r in records], dtype=object)}

    def __del__(self):
        """On a normal exit (the pool shrinks, the batch ends): stop the ranks and give back the placement group."""
        generator = getattr(self, "generator", None)
        if generator is not None:
            generator.close()
            _remove_own_placement_group()


def _remove_own_placement_group() -> None:
    try:
        import ray
        from ray.util.placement_group import remove_placement_group

        pg = ray.util.get_current_placement_group()
        if pg is not None:
            remove_placement_group(pg)
    except Exception:  # noqa: BLE001 - Ray is shutting down; the driver removes what is left
        pass


class ActorPlacement:
    """`ray_remote_args_fn` for SP actors: a fresh placement group per actor (see the module docstring).

    Args:
        sp_degree: ranks per actor (one GPU each when `gpus` is true).
        cpus_per_rank: CPUs reserved per rank.
        gpus: reserve a GPU per rank (False: CPU ranks, for tests).
        name: prefix of the placement groups' names (so `remove_all` and a person can find them).
    """

    def __init__(self, sp_degree: int, cpus_per_rank: float, gpus: bool, name: str):
        self.bundles = [{"CPU": HOST_CPUS}] + [{"CPU": cpus_per_rank, **({"GPU": 1} if gpus else {})}
                                                for _ in range(sp_degree)]
        self.name = name
        self.created: list = []

    def __call__(self) -> dict:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.placement_group(self.bundles, strategy="STRICT_PACK", name=f"{self.name}-{len(self.created)}")
        self.created.append(pg)
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}

    def remove_all(self) -> int:
        """Remove every placement group this placement created that is still there; returns how many."""
        import ray
        from ray.util.placement_group import placement_group_table, remove_placement_group

        removed = 0
        for pg in self.created:
            try:
                if placement_group_table(pg).get("state") != "REMOVED":
                    remove_placement_group(pg)
                    removed += 1
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.created = []
        return removed if ray.is_initialized() else 0
