"""The pre-calibration pass: full-compute sampling that records one training pair per bridge.

For every calibration prompt the pipeline samples with full compute. A forward hook on the final block
sees each call with its step and guidance branch (read through the bridge runtime, enabled with every
step full, which is bit-identical to the plain pipeline). At an anchor step `a` of the calibration
schedule it stores the block's stream input `x_a^L`; at a bridged step `b` it stores the step's
conditioning (every other block argument), the output head's conditioning (`head.py`) and the block's
hidden-state output `F^L(x_b^L)`, and writes the pair (stream of a, a reference to the stream of the full
step before a for extrapolated inputs, conditioning of b, target of b) to the index. Tensors go to disk as
they are produced, so memory stays bounded by one step's tensors; the index is appended once per finished
sample, and a rerun skips samples already recorded. A sample is a calibration prompt x seed or a validation
prompt (`RecordConfig.samples`); each index line names its sample (`prompt`, an index into the manifest's
`samples`) and its `split` ("train" or "validation").
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..bridge import BridgeConfig, Schedule, apply_bridge, config_digest, get_bridge, remove_bridge
from ..models import BlockArgs, get_spec
from .config import RecordConfig
from .head import capture_head_inputs, head_conditioning
from .resume import RECORDING_KEYS, clear_pairs, refusal, settings_differences
from .store import TensorStore, append_index, read_index, read_manifest, write_manifest


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def pairs_manifest(pipe, schedule: Schedule, config: RecordConfig) -> dict:
    transformer = pipe.transformer
    spec = get_spec(transformer)
    return {
        "lbdist_version": __version__,
        "family": spec.family,
        "transformer_class": spec.transformer_class.__name__,  # the diffusers class, also under xfuser wrappers
        "config_digest": config_digest(transformer),
        "schedule": schedule.to_dict(),
        "prompts": list(config.prompts),
        "seeds": list(config.seeds),
        "seeds_per_prompt": config.seeds_per_prompt,
        "validation_prompts": list(config.validation_prompts),
        "validation_seeds": list(config.validation_seeds),
        "samples": [list(s) for s in config.samples()],
        # callbacks (progress, interruption) do not change what is recorded
        "call_kwargs": _json_safe({k: v for k, v in config.call_kwargs.items() if not callable(v)}),
        "stream": list(spec.stream_names),
        "target": "hidden_states output of the final block",
        "completed_prompts": [],
    }


def pairs_differences(pipe, schedule: Schedule, config: RecordConfig, out_dir: str | os.PathLike) -> list[str]:
    """`name: old -> new` for each recording setting that differs from the recording in `out_dir` (none
    if `out_dir` holds no recording)."""
    existing = read_manifest(out_dir) if Path(out_dir).is_dir() else None
    if existing is None:
        return []
    return settings_differences(existing, pairs_manifest(pipe, schedule, config), RECORDING_KEYS)


def _start_or_resume(out_dir: Path, manifest: dict, restart: bool) -> dict:
    """Write the manifest of a new recording, or of the resumed one (same settings) with its progress."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if restart:
        clear_pairs(out_dir)
    existing = read_manifest(out_dir)
    if existing is not None:
        diff = settings_differences(existing, manifest, RECORDING_KEYS)
        if diff:
            raise refusal("pairs recorded", out_dir, diff)
        manifest["completed_prompts"] = existing.get("completed_prompts", [])
    write_manifest(out_dir, manifest)
    return manifest


def record_pairs(pipe, schedule: Schedule, config: RecordConfig, out_dir: str | os.PathLike,
                 progress: bool = True, restart: bool = False) -> dict:
    """Record every bridge's pairs for `config.prompts` into `out_dir`; returns the manifest.

    Resumes: prompts listed as completed in an existing recording with the same settings (model, schedule,
    prompts, seeds, call arguments) are skipped. A recording with other settings is refused with the
    differences listed (`SettingsChanged`, a ValueError), unless `restart`, which discards the recording
    in `out_dir` (whatever its settings) and records again.
    """
    if not isinstance(schedule, Schedule) or not schedule.bridged_steps:
        raise ValueError(f"schedule {getattr(schedule, 'description', schedule)!r:.80} bridges no step, so there is "
                         "nothing to calibrate: use a Schedule with an interval >= 2 (Schedule.periodic(steps, N))")
    if not isinstance(config, RecordConfig):
        raise ValueError(f"config must be a RecordConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    manifest = _start_or_resume(out_dir, pairs_manifest(pipe, schedule, config), restart)

    transformer = pipe.transformer
    spec = get_spec(transformer)
    final = spec.final_block(transformer)
    args = BlockArgs(final)
    store = TensorStore(out_dir)
    anchors = set(schedule.full_steps)
    before = get_bridge(pipe)  # a pipeline already bridged (an Engine's) gets its configuration back afterwards
    previous = None if before is None else (before.schedule, before.adapters, before.inputs)
    runtime = apply_bridge(pipe, config=BridgeConfig(Schedule.full(schedule.num_steps)))
    state = {"anchor": {}, "previous": {}, "entries": [], "prompt": None, "split": None}
    sink: dict = {}  # what the output head needs beyond the block's arguments (Wan: the condition embedder's temb)

    def on_final_block(module, a, kw, output):
        cur = runtime.current
        step, branch = cur.plan.step, cur.branch
        if step in anchors:
            state["previous"][branch] = state["anchor"].get(branch)
            state["anchor"][branch] = (step, {n: store.put(args.get(n, a, kw)) for n in spec.stream_names})
            return
        anchor_step, stream = state["anchor"][branch]
        previous_step, previous_stream = state["previous"].get(branch) or (None, None)
        if schedule.plan(step).anchor != anchor_step:  # anchors are always called before their bridges
            raise RuntimeError(f"step {step} ({branch}) expected anchor {schedule.plan(step).anchor}, "
                               f"recorded anchor is {anchor_step}")
        bound = args.bind(a, kw)
        cond = {k: v for k, v in bound.items() if k not in spec.stream_names}
        state["entries"].append({
            "prompt": state["prompt"], "split": state["split"], "step": step, "branch": branch,
            "anchor": anchor_step, "stream": stream, "previous": previous_step, "stream_previous": previous_stream,
            "cond": store.put_tree(cond), "head": store.put_tree(head_conditioning(spec.family, cond, sink)),
            "target": store.put(spec.unpack_output(output)["hidden_states"]),
        })

    handle = final.register_forward_hook(on_final_block, with_kwargs=True)
    head_handle = capture_head_inputs(transformer, spec.family, sink)
    samples = config.samples()
    bar = tqdm(total=len(samples), desc="recording pairs", disable=not progress)
    try:
        for index, (prompt, seed, split) in enumerate(samples):
            if index in manifest["completed_prompts"]:
                bar.update()
                continue
            state.update(anchor={}, previous={}, entries=[], prompt=index, split=split)
            with torch.no_grad():
                pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed),
                     num_inference_steps=schedule.num_steps, output_type="latent", **config.call_kwargs)
            append_index(out_dir, state["entries"])
            manifest["completed_prompts"] = sorted({*manifest["completed_prompts"], index})
            manifest["branches"] = sorted({e["branch"] for e in read_index(out_dir)})
            write_manifest(out_dir, manifest)
            bar.update()
            bar.set_postfix(pairs=len(state["entries"]), tensors_written=store.written)
    finally:
        bar.close()
        handle.remove()
        if head_handle is not None:
            head_handle.remove()
        if previous is None:
            remove_bridge(pipe)
        else:
            runtime.configure(*previous)
    return manifest
