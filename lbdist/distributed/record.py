"""Recording on the pool: full-compute sampling of the calibration prompts on worker groups, pairs streamed out.

The workers form `workers // sp_degree` groups (`lbdist.parallel.WorkerGroup`, xfuser Ulysses inside each
group for video models); prompts go to whichever group is free. On every rank a forward hook on the final
block sees each call (its step and guidance branch read through the bridge runtime, every step full). At an
anchor it gathers the rank shards of the stream into the whole sequence (`SequenceGather`); at a bridged step
it gathers the conditioning and the target and rank 0 writes the pair as one shard to
`pairs/step<b>_<branch>/prompt<p>.safetensors` at once, so memory holds one pair and no node holds the
recording. When the prompt is done, its index (every shard with sha256 and size) is written: that is the
commit. A resubmitted run verifies every committed prompt's shards and re-records a prompt whose shards are
missing, truncated or corrupted.
"""
from __future__ import annotations

import time
from collections import deque

import torch

from .. import storage
from .layout import RunLayout, list_names, read_json, write_json
from .shards import encode_pair, sha256

# --- on every rank ------------------------------------------------------------------------------------------


class SequenceGather:
    """Whole-sequence copies of rank shards (identity on one rank). Collective: every rank calls in step."""

    def __init__(self):
        dist = torch.distributed
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _all(self, t: torch.Tensor) -> list[torch.Tensor]:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t)
        return parts

    def stream(self, t: torch.Tensor) -> torch.Tensor:
        """Stream states and targets are `[batch, tokens, dim]` sharded over tokens."""
        return t if self.world == 1 else torch.cat(self._all(t), dim=-2)

    def cond(self, value, tokens: int, name: str = "conditioning"):
        """A conditioning tree: a tensor equal on every rank is kept; one that differs is a shard, joined along
        its token dimension: the first of size `tokens` (the rank's token count) after the batch dimension, or
        the rows of a 2-D table (xfuser shards RoPE tables `[1, S, 1, D]` (Wan) and `[S, D]` (HunyuanVideo))."""
        if self.world == 1:
            return value
        if isinstance(value, torch.Tensor):
            parts = self._all(value)
            if all(torch.equal(parts[0], p) for p in parts[1:]):
                return value
            # the token dimension: the first of size `tokens` after the batch dimension (2-D tables: rows)
            first = 0 if value.ndim == 2 else 1
            dims = [d for d in range(first, value.ndim - 1) if value.shape[d] == tokens]
            if not dims:
                raise RuntimeError(f"{name} {tuple(value.shape)} differs across sequence-parallel ranks but has no "
                                   f"dimension of the rank's {tokens} tokens: cannot gather it into a whole pair")
            return torch.cat(parts, dim=dims[0])
        if isinstance(value, (tuple, list)):
            return type(value)(self.cond(v, tokens, f"{name}[{i}]") for i, v in enumerate(value))
        if isinstance(value, dict):
            return {k: self.cond(v, tokens, f"{name}.{k}") for k, v in value.items()}
        return value


def record_prompt(worker, index: int, prompt: str, seed: int, schedule: dict, call_kwargs: dict, root: str,
                  stop_after: int | None = None):
    """Record one prompt on one group (called on every rank); rank 0 returns the index entries of its shards.
    `stop_after`: interrupt the sampling after that many steps (benchmarks that extrapolate)."""
    from ..bridge import BridgeConfig, Schedule, apply_bridge
    from ..calibrate.objective import block_args
    from ..models import get_spec

    pipe, layout = worker.pipe, RunLayout(root)
    spec = get_spec(pipe.transformer)
    plan = Schedule.from_dict(schedule)
    final, gather, lead = spec.final_block(pipe.transformer), SequenceGather(), worker.rank == 0
    args = block_args(final)
    runtime = apply_bridge(pipe, config=BridgeConfig(Schedule.full(plan.num_steps)))
    anchors, entries = {}, []

    def on_final_block(module, a, kw, output):
        step, branch = runtime.current.plan.step, runtime.current.branch
        if step in plan.full_steps:
            anchors[branch] = (step, {n: gather.stream(args.get(n, a, kw)) for n in spec.stream_names})
            return
        anchor, stream = anchors[branch]
        if plan.plan(step).anchor != anchor:
            raise RuntimeError(f"step {step} ({branch}) expected anchor {plan.plan(step).anchor}, recorded {anchor}")
        tokens = args.get(spec.stream_names[0], a, kw).shape[-2]
        bound = args.bind(a, kw)
        cond = gather.cond({k: v for k, v in bound.items() if k not in spec.stream_names}, tokens)
        target = gather.stream(spec.unpack_output(output)["hidden_states"])
        if lead:
            entry = {"prompt": index, "step": step, "branch": branch, "anchor": anchor}
            data = encode_pair(entry, stream, cond, target)
            path = layout.shard(step, branch, index)
            storage.write_bytes(path, data)
            entries.append({**entry, "file": path[len(layout.root) + 1:], "sha256": sha256(data), "bytes": len(data)})

    def interrupt(p, i, t, tensors):
        if stop_after is not None and i + 1 >= stop_after:
            p._interrupt = True
        return {}

    handle = final.register_forward_hook(on_final_block, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=plan.num_steps,
                 output_type="latent", callback_on_step_end=interrupt if stop_after else None, **call_kwargs)
    finally:
        handle.remove()
        apply_bridge(pipe, config=None)
    return entries if lead else None


def describe_model(worker, job_fields: dict) -> dict:
    """Resolve the sampling shape against the loaded model and check it splits over the group (every rank)."""
    from ..bridge import config_digest
    from ..generation.request import GenerationRequest
    from ..models import get_spec
    from ..parallel import degree

    info = worker.engine.info
    request = GenerationRequest(job_fields["prompt"], height=job_fields["height"], width=job_fields["width"],
                                num_frames=job_fields["frames"], num_inference_steps=job_fields["steps"],
                                guidance_scale=job_fields["guidance"], schedule=job_fields["schedule"]).resolve(info)
    call = request.call_kwargs(info)
    call.pop("num_inference_steps")
    degree.check_call(worker.pipe, info.family, call, worker.sp_degree)
    transformer = worker.pipe.transformer
    spec = get_spec(transformer)
    final = spec.final_block(transformer)
    lora = sum(m.in_features + m.out_features for n, m in final.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t) for t in spec.lora_targets))
    return {"family": spec.family, "transformer_class": spec.transformer_class.__name__,
            "config_digest": config_digest(transformer), "call_kwargs": call,
            "block_bytes": sum(p.numel() * p.element_size() for p in final.parameters()),
            "lora_numel_per_rank": lora, "stream": list(spec.stream_names)}


# --- on the driver ------------------------------------------------------------------------------------------


def committed(layout: RunLayout) -> dict[int, list[dict]]:
    """prompt -> its index entries, for every committed prompt."""
    out = {}
    for name in list_names(storage.join(layout.pairs, "index"), ".json"):
        data = read_json(storage.join(layout.pairs, "index", name))
        out[int(data["prompt"])] = data["entries"]
    return out


def _shard_ok(layout: RunLayout, entry: dict, full: bool) -> bool:
    path = layout.path(entry["file"])
    try:
        if not full:
            if storage.is_local(path):
                return storage.local_path(path).stat().st_size == entry["bytes"]
            fs, inner = storage.filesystem(path)
            return fs.size(inner) == entry["bytes"]
        data = storage.read_bytes(path)
    except (OSError, FileNotFoundError):
        return False
    return len(data) == entry["bytes"] and sha256(data) == entry["sha256"]


def verify(layout: RunLayout, full: bool = True) -> tuple[dict[int, list[dict]], list[int]]:
    """(committed prompts whose shards all check out, prompts whose shards did not: their index is removed so
    they are recorded again)."""
    from concurrent.futures import ThreadPoolExecutor

    good, bad = {}, []
    items = sorted(committed(layout).items())
    with ThreadPoolExecutor(8) as pool:
        checks = [(p, list(pool.map(lambda e: _shard_ok(layout, e, full), entries))) for p, entries in items]
    for (prompt, entries), (_, oks) in zip(items, checks):
        if entries and all(oks):
            good[prompt] = entries
        else:
            storage.remove(layout.index(prompt))
            bad.append(prompt)
    return good, bad


def _commit(layout: RunLayout, prompt: int, entries: list[dict]) -> None:
    write_json(layout.index(prompt), {"prompt": prompt, "entries": sorted(entries, key=lambda e: (e["step"], e["branch"]))})


def run_queue(groups, prompts: deque, start, on_done, stop, max_failures: int) -> None:
    """Feed prompts to free groups until all are done or `stop()`; `start(group, prompt) -> refs`,
    `on_done(prompt, result)`. A group that loses a worker is restarted (up to `max_failures` times) and its
    prompt queued again."""
    import ray

    from ..parallel import WorkerDiedError

    busy, failures = {}, 0
    while prompts or busy:
        if stop():  # prompts in flight are abandoned: not committed, so a resubmission records them again
            return
        for g, group in enumerate(groups):
            if g not in busy and prompts:
                prompt = prompts.popleft()
                busy[g] = (prompt, start(group, prompt))
        if not busy:
            return
        ready, _ = ray.wait([refs[0] for _, refs in busy.values()], num_returns=1, timeout=1.0)
        for g in [g for g, (_, refs) in busy.items() if refs[0] in ready]:
            prompt, refs = busy.pop(g)
            try:
                on_done(prompt, groups[g].collect(refs)[0])
            except WorkerDiedError:
                failures += 1
                if failures > max_failures:
                    raise
                groups[g].restart()
                prompts.appendleft(prompt)


def record_all(job, layout: RunLayout, groups, description: dict, progress, stop, stop_after: int | None = None
               ) -> dict:
    """Record every prompt not yet committed, on `groups` (started, model loaded); returns counts."""
    from .progress import fmt_seconds

    schedule = job.parsed_schedule().to_dict()
    total = len(job.prompts)
    todo = deque(p for p in range(total) if not storage.exists(layout.index(p)))
    already, began, done = total - len(todo), time.monotonic(), []

    def start(group, p):
        return group.submit("run", record_prompt, (p, job.prompts[p], job.seeds[p], schedule,
                                                     description["call_kwargs"], layout.root, stop_after), {})

    def on_done(p, entries):
        _commit(layout, p, entries)
        done.append(p)
        finished = already + len(done)
        eta = (time.monotonic() - began) / len(done) * (total - finished)
        progress.line("record", f"prompts {finished}/{total} done | prompt {p}: {len(entries)} pairs written | "
                                f"ETA {fmt_seconds(eta)}")

    run_queue(groups, todo, start, on_done, stop, job.max_failures)
    return {"recorded": len(done), "skipped": already}
