"""Training one LoRA per bridge on the final block, from recorded pairs; resumable, seeded, deterministic.

`train_bridge` is a plain function of (final block, pairs, config): the distributed calibration job calls
it on remote workers. `train_joint` fits the cond and uncond adapters of one step together on the guided
output (objective "guided", the lbdist recipe on two-branch families). `train_adapters` runs it for every bridge of a recording on one device and writes
the adapter set as it goes: each finished bridge is saved at once (its safetensors file, then the
manifest, both atomically), and a rerun skips bridges already in the output directory.
"""
from __future__ import annotations

import copy
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from tqdm.auto import tqdm

from .. import __version__
from ..bridge import AdapterSet, LoraSettings, Schedule, config_digest
from ..bridge.adapter_set import MANIFEST as ADAPTER_MANIFEST
from ..models import ModelSpec, get_spec
from .config import TrainConfig
from .objective import Head, guided_loss, pair_loss
from .resume import BRIDGE_RECORDING_KEYS, clear_adapter_set, refusal, settings_differences, training_settings
from .store import TensorStore, read_index, read_manifest


@dataclass
class Pair:
    """One training example of a bridge: the anchor's stream, the bridged step's conditioning, the target.

    prompt: the recorded sample's index. head: the output head's conditioning (output-space objectives).
    previous: the stream of the full step before the anchor (extrapolated inputs; None in the first cycle).
    steps: (bridged step, anchor, previous full step) for the extrapolation.
    """

    prompt: int
    stream: dict
    cond: dict
    target: torch.Tensor
    head: dict | None = None
    previous: dict | None = None
    steps: tuple | None = None


def _pair(store: TensorStore, e: dict, device) -> Pair:
    previous = e.get("stream_previous")
    return Pair(e["prompt"], {k: store.get(v, device) for k, v in e["stream"].items()},
                store.get_tree(e["cond"], device), store.get(e["target"], device),
                head=store.get_tree(e["head"], device) if e.get("head") is not None else None,
                previous={k: store.get(v, device) for k, v in previous.items()} if previous else None,
                steps=(e["step"], e["anchor"], e.get("previous")))


def load_pairs(pairs_dir: str | os.PathLike, step: int, branch: str, device="cpu") -> list[Pair]:
    store = TensorStore(pairs_dir)
    entries = [e for e in read_index(pairs_dir) if e["step"] == step and e["branch"] == branch]
    return [_pair(store, e, device) for e in sorted(entries, key=lambda e: e["prompt"])]


def bridge_seed(base: int, step: int, branch: str) -> int:
    return (base * 1_000_003 + step * 101 + zlib.crc32(branch.encode())) % (2**31)


def train_bridge(block: torch.nn.Module, spec: ModelSpec, train: list[Pair], held_out: list[Pair],
                 config: TrainConfig, targets: tuple[str, ...], seed: int = 0, on_eval=None,
                 init: dict | None = None, context: Head | None = None) -> tuple[dict, dict]:
    """Fit one LoRA on a copy of `block` so that block(anchor stream, step conditioning) ~ target.

    Returns (peft state dict of the best adapter, info with losses, epochs and seconds). Early stopping
    watches the held-out pairs' loss (the training loss if there are none); with `config.refit` the
    adapter is then retrained on all pairs for the best epoch count. `config` must be resolved. `init`: a
    peft state dict to start from instead of the seeded fresh LoRA (warm start from a neighbouring bridge).
    `context`: the `Head` output-space objectives train through (None for the paper's objective).
    """
    state, info = _fit(block, spec, train, held_out, config, targets, seed, on_eval, init=init, context=context)
    if config.refit and held_out and info["best_epoch"] > 0:
        refit = replace(config, max_epochs=info["best_epoch"], eval_every=info["best_epoch"], max_seconds=None)
        state, again = _fit(block, spec, train + held_out, [], refit, targets, seed, None, keep_last=True, init=init,
                            context=context)
        info.update(refit_epochs=again["epochs_run"], refit_train_loss=again["train_loss_last"],
                    seconds=round(info["seconds"] + again["seconds"], 3))
    return state, info


def _plain_copy(block: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the final block without any resident LoRA layers (an Engine may hold adapter sets on it)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    work = copy.deepcopy(block).requires_grad_(False)
    for name, module in list(work.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, child, module.get_base_layer())
    return work


def lora_copy(block: torch.nn.Module, config: TrainConfig, targets: tuple[str, ...], seed: int):
    """A frozen copy of `block` (resident LoRA layers stripped) with a fresh fp32 LoRA ("calibrating") seeded
    by `seed`; returns (copy, LoRA parameters). The distributed trainer starts every bridge from this same
    initial state."""
    torch.manual_seed(seed)
    work = _plain_copy(block)
    inject_adapter_in_model(LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(targets)),
                            work, adapter_name="calibrating")
    params = [p for n, p in work.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return work, params


def _fit(block, spec, train, held_out, config, targets, seed, on_eval, keep_last: bool = False, init=None,
         context=None):
    if not train:
        raise ValueError("train_bridge needs at least one training pair")
    if config.lr is None or config.max_epochs is None:
        raise ValueError("resolve the TrainConfig first: config.resolved(family)")
    work, params = lora_copy(block, config, targets, seed)
    if init is not None:
        with torch.no_grad():
            set_peft_model_state_dict(work, init, adapter_name="calibrating")

    def loss_of(pair: Pair) -> torch.Tensor:
        return pair_loss(work, spec, pair, config, context)  # the one objective seam (objective.py)

    best, info = _loop(params, train, held_out, config, loss_of, on_eval, keep_last)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in get_peft_model_state_dict(work, adapter_name="calibrating").items()}
    return state, info


def train_joint(block: torch.nn.Module, spec: ModelSpec, train: dict, held_out: dict, config: TrainConfig,
                targets: tuple[str, ...], seeds: dict, context: Head, on_eval=None) -> tuple[dict, dict]:
    """Fit the adapters of one step's branches together on the guided output (`objective.guided_loss`).

    `train` / `held_out` map branch -> pairs (the same samples in every branch); `seeds` branch -> seed (each
    branch's LoRA starts as `train_bridge` would start it). One AdamW over both adapters, gradients clipped
    together, early stopping on the held-out samples' guided loss. Returns (branch -> peft state, info).
    """
    works, params = {}, []
    for branch in train:
        works[branch], p = lora_copy(block, config, targets, seeds[branch])
        params += p

    def samples(pairs: dict) -> list[dict]:
        by = {b: {p.prompt: p for p in v} for b, v in pairs.items()}
        keys = sorted(set.intersection(*(set(v) for v in by.values()))) if by else []
        return [{b: by[b][k] for b in by} for k in keys]

    def loss_of(sample: dict) -> torch.Tensor:
        return guided_loss(works, spec, sample, config, context)

    best, info = _loop(params, samples(train), samples(held_out) if any(held_out.values()) else [], config,
                       loss_of, on_eval, False)
    states = {b: {k: v.detach().to("cpu", torch.float32).contiguous()
                  for k, v in get_peft_model_state_dict(w, adapter_name="calibrating").items()} for b, w in works.items()}
    return states, info


def _loop(params, train, held_out, config, loss_of, on_eval, keep_last):
    """AdamW over `params` on `loss_of(item)` averaged over `train`, early stopping on `held_out` (or the
    training loss); the parameters end at the best evaluation's values. Returns (best, info)."""
    if not train:
        raise ValueError("train_bridge needs at least one training pair")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def evaluate(pairs: list[Pair]) -> float:
        with torch.no_grad():
            return sum(loss_of(p).item() for p in pairs) / len(pairs)

    watched = held_out or train
    start = time.perf_counter()
    first = evaluate(watched)  # LoRA B starts at zero: this is the uncalibrated bridge's loss
    best = (first, [p.detach().clone() for p in params], 0)
    stale, epoch, train_loss = 0, 0, float("nan")
    for epoch in range(1, config.max_epochs + 1):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for pair in train:
            loss = loss_of(pair) / len(train)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        train_loss = total
        if epoch % config.eval_every == 0 or epoch == config.max_epochs:
            value = evaluate(held_out) if held_out else train_loss
            if on_eval is not None:
                on_eval(epoch, train_loss, value)
            if keep_last or value < best[0] * (1 - config.min_delta):
                best, stale = (value, [p.detach().clone() for p in params], epoch), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
            if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                break
    with torch.no_grad():
        for p, saved in zip(params, best[1]):
            p.copy_(saved)
    info = {"loss_uncalibrated": first, "loss_best": best[0], "best_epoch": best[2], "epochs_run": epoch,
            "stopped_early": epoch < config.max_epochs, "train_loss_last": train_loss,
            "watched": "held_out" if held_out else "train", "train_pairs": len(train), "held_out_pairs": len(held_out),
            "seconds": round(time.perf_counter() - start, 3)}
    return best, info


def _recording(transformer: torch.nn.Module, spec: ModelSpec, pairs_dir) -> dict:
    """The pairs manifest of `pairs_dir`, refused if it was recorded on another model."""
    manifest = read_manifest(pairs_dir)
    if manifest is None:
        raise ValueError(f"{pairs_dir} holds no recorded pairs (no pairs_manifest.json); run the recorder first")
    digest = config_digest(transformer)
    if manifest["config_digest"] != digest or manifest["family"] != spec.family:
        raise ValueError(f"pairs in {pairs_dir} were recorded on {manifest['transformer_class']} (config digest "
                         f"{manifest['config_digest']}), not on this {type(transformer).__name__} ({digest})")
    return manifest


def _set_fields(adapters: AdapterSet) -> dict:
    """What the whole set must share to be resumed: model, schedule, LoRA shape."""
    return {"model": f"{adapters.transformer_class} (config digest {adapters.config_digest})",
            "schedule": adapters.schedule.to_dict(), "lora_rank": adapters.lora.rank,
            "lora_alpha": adapters.lora.alpha, "lora_targets": list(adapters.lora.targets)}


def _resume(adapters: AdapterSet, out_dir: Path, settings: dict) -> None:
    """Take the bridges already trained in `out_dir` into `adapters`, if they were trained for the same
    model, schedule and LoRA shape, and each with exactly `settings`; SettingsChanged otherwise."""
    try:
        done = AdapterSet.load(out_dir)
    except ValueError as e:
        raise ValueError(f"{e}; pass restart=True (CLI --restart) to start over in {out_dir}") from None
    differences = settings_differences(_set_fields(done), _set_fields(adapters))
    info = done.extra.get("training") if isinstance(done.extra.get("training"), dict) else {}
    for step, branch in sorted(done.weights):
        entry = info.get(f"{step}_{branch}")
        old = entry.get("settings") if isinstance(entry, dict) else None
        for line in settings_differences(old if isinstance(old, dict) else {}, settings):
            if line not in differences:
                differences.append(line)
    if differences:
        raise refusal(f"an adapter set ({len(done.weights)} bridges) trained", out_dir, differences)
    adapters.weights.update(done.weights)
    adapters.digests.update(done.digests)
    adapters.extra["training"].update(info)


def check_resumable(pipe, schedule: Schedule, record, out_dir: str | os.PathLike,
                    config: TrainConfig = TrainConfig()) -> None:
    """Refuse now, before any pair is recorded, a run into `out_dir` whose adapter set was trained with other
    settings (`SettingsChanged`, the refusal `train_adapters` would give only after recording)."""
    from .recorder import pairs_manifest

    out_dir = Path(out_dir)
    if not (out_dir / ADAPTER_MANIFEST).is_file():
        return
    spec = get_spec(pipe.transformer)
    config = config.resolved(spec.family)
    manifest = pairs_manifest(pipe, schedule, record)  # what the recording will hold
    probe = AdapterSet(spec.family, spec.transformer_class.__name__, manifest["config_digest"], schedule, (),
                       LoraSettings(config.rank, config.alpha, spec.lora_targets), extra={"training": {}})
    _resume(probe, out_dir, training_settings(config, manifest))


def train_adapters(transformer: torch.nn.Module, pairs_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   config: TrainConfig = TrainConfig(), progress: bool = True, stop_after: int | None = None,
                   restart: bool = False) -> AdapterSet:
    """Train every bridge recorded in `pairs_dir` and write the adapter set to `out_dir` as it goes.

    Bridges already in `out_dir` are kept and skipped if they were trained for the same model, schedule
    and LoRA shape with the same settings (resolved TrainConfig, and the recording's prompts, seeds and
    call arguments); otherwise `SettingsChanged` (a ValueError) lists the differences. `restart` discards
    the set in `out_dir` first and trains every bridge again. Each bridge's manifest entry
    (`training.<step>_<branch>`) records the settings it was trained with. `stop_after` stops after that
    many newly trained bridges (used to test resumption).
    """
    spec = get_spec(transformer)
    manifest = _recording(transformer, spec, pairs_dir)
    config = config.resolved(spec.family)
    schedule = Schedule.from_dict(manifest["schedule"])
    entries = read_index(pairs_dir)
    _check_recording(config, entries, pairs_dir)
    branches = tuple(sorted({e["branch"] for e in entries}))
    bridges = sorted({(e["step"], e["branch"]) for e in entries})
    validation = {e["prompt"] for e in entries if e.get("split") == "validation"}
    prompts = sorted({e["prompt"] for e in entries} - validation)
    if validation and config.recipe != "paper":
        held = validation  # early stopping on the validation samples; never trained on, so no refit
    else:
        held = set(prompts[len(prompts) - config.holdout_prompts:]) if 0 < config.holdout_prompts < len(prompts) else set()
    settings = training_settings(config, manifest)
    adapters = AdapterSet(spec.family, spec.transformer_class.__name__, manifest["config_digest"], schedule, branches,
                          LoraSettings(config.rank, config.alpha, spec.lora_targets),
                          extra={"lbdist_version": __version__, "training": {}, "train_config": asdict(config),
                                 "recording": {k: manifest.get(k) for k in BRIDGE_RECORDING_KEYS},
                                 "calibration_prompts": manifest["prompts"], "held_out_prompts": sorted(held),
                                 "recipe": {k: getattr(config, k) for k in ("recipe", "objective", "bridge_input")},
                                 "bridge_input": config.bridge_input})
    out_dir = Path(out_dir)
    if restart:
        clear_adapter_set(out_dir)
    elif (out_dir / ADAPTER_MANIFEST).is_file():
        _resume(adapters, out_dir, settings)
    run = replace(config, refit=False) if held and held == validation else config
    context = Head(transformer, spec.family, float(manifest.get("call_kwargs", {}).get("guidance_scale") or 1.0))
    jobs = _jobs(run, bridges, branches)
    _train_missing(adapters, spec, spec.final_block(transformer), pairs_dir, out_dir, run, jobs, held, validation,
                   settings, progress, stop_after, context)
    return adapters


def _check_recording(config: TrainConfig, entries: list[dict], pairs_dir) -> None:
    """Refuse a recording that lacks what the recipe trains on (older recordings, distributed ones)."""
    if not entries:
        return
    if config.bridge_input == "extrapolate" and "stream_previous" not in entries[0]:
        raise ValueError(f"{pairs_dir} was recorded without the previous full step's stream, which bridge_input "
                         "'extrapolate' needs: record again with this lbdist, or train with recipe='paper'")
    if config.objective != "hidden" and entries[0].get("head") is None:
        raise ValueError(f"{pairs_dir} was recorded without the output head's conditioning, which objective "
                         f"{config.objective!r} needs: record again with this lbdist, or train with recipe='paper'")


def _jobs(config: TrainConfig, bridges: list, branches: tuple) -> list[tuple[int, tuple[str, ...]]]:
    """What is trained at once: (step, branches); the guided objective fits a step's branches jointly."""
    if config.objective == "guided" and len(branches) > 1:
        return [(step, branches) for step in sorted({s for s, _ in bridges})]
    return [(step, (branch,)) for step, branch in bridges]


def _train_missing(adapters, spec, final, pairs_dir, out_dir, config, jobs, held, validation, settings, progress,
                   stop_after, context):
    device = next(final.parameters()).device
    todo = [(s, bs) for s, bs in jobs if any((s, b) not in adapters.weights for b in bs)]
    bar = tqdm(todo, desc="training bridges", disable=not progress)
    for count, (step, branches) in enumerate(bar):
        if stop_after is not None and count >= stop_after:
            break
        pairs = {b: load_pairs(pairs_dir, step, b, device) for b in branches}
        train = {b: [p for p in v if p.prompt not in held and p.prompt not in validation] for b, v in pairs.items()}
        held_out = {b: [p for p in v if p.prompt in held] for b, v in pairs.items()}

        def show(epoch, train_loss, watched, step=step, branches=branches):
            bar.set_postfix_str(f"step {step} {'+'.join(branches)} epoch {epoch} train {train_loss:.3e} "
                                f"held-out {watched:.3e}")

        seeds = {b: bridge_seed(config.seed, step, b) for b in branches}
        if len(branches) > 1:
            states, info = train_joint(final, spec, train, held_out, config, spec.lora_targets, seeds, context, show)
            info = {**info, "joint": list(branches)}
        else:
            (b,) = branches
            state, info = train_bridge(final, spec, train[b], held_out[b], config, spec.lora_targets, seed=seeds[b],
                                       on_eval=show, context=context)
            states = {b: state}
        for b, state in states.items():
            adapters.weights[(step, b)] = state
            adapters.extra["training"][f"{step}_{b}"] = {**info, "settings": settings}
        adapters.save(out_dir, only=[(step, b) for b in states])
    bar.close()
