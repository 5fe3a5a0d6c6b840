"""The demo: calibrate the bundled Wan-architecture toy from 3 prompts with the lbdist recipe, then show full
compute beside LearniBridge, the uncalibrated bridge and TaylorSeerCache lite (the peer, at the same interval)
on a held-out prompt, with measured speed and fidelity.

    lbdist demo --out out/demo            # about 2-4 minutes on 2 CPU cores

Calibration follows the held-out protocol (`lbdist.evaluate.generalisation`): the calibration prompts, early
stopping on validation prompts drawn from the toy's training split the way the protocol draws them (neither
calibration prompts nor the shown one), rank 8, lr 2e-3, at most 300 epochs, evaluation every 5, patience 3.

Writes `side_by_side.mp4` and `side_by_side.gif` (panels: full compute | LearniBridge | uncalibrated
bridge | TaylorSeer lite), `report.json` and `report.md` (steps, full steps executed, transformer calls,
transformer time and speedup measured in this run, PSNR / SSIM against full compute, prompt adherence), and
keeps the adapter set and the recorded pairs under `out/`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .generation.request import MAX_FPS, MAX_SEED, MAX_STEPS, GenerationRequest
from .io import atomic_write, save_video

_REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}
MAX_VALIDATION_PROMPTS = 20
# `lbdist.evaluate.generalisation.VALIDATION_POOL_SEED` (equal, tested), not imported: that imports torch, and
# the options are checked before torch loads
_VALIDATION_POOL_SEED = 7
PEER = "TaylorSeerCache lite"  # the peer shown beside the bridge: `taylorseer_lite` at the bridge's interval


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    model: pipeline source (`toy:wan` is the bundled trained toy; `tiny:wan` a random one for tests).
    interval: the bridge schedule's N (full at 0, N, 2N, ...).
    steps: denoising steps (None: the model's default).
    calibration_prompts: how many calibration prompts (the method needs 3-5).
    validation_prompts: how many validation prompts the lbdist recipe early-stops on (training-split
        combinations, as the held-out protocol draws them; never a calibration prompt or the shown one).
    prompt: the held-out prompt to show (None: the first evaluation prompt of the toy grammar).
    rank, epochs, lr: LoRA rank, epoch cap and learning rate per bridge (default: the recipe's protocol
        settings, rank 8, at most 300 epochs, lr 2e-3; early stopping usually ends training near epoch 10).
    seed: sampling seed of the shown generation.
    timing_runs: timed generations per method after a warm-up, the methods interleaved; the report keeps each
        method's fastest transformer time (the outputs are identical; on a shared CPU one run's time is noisy).
    threads: torch CPU threads (1 by default: the toy's matrices are small, and one thread per process is
        fastest and is not slowed down by whatever else runs on the machine).
    """

    model: str = "toy:wan"
    interval: int = 5
    steps: int | None = None
    calibration_prompts: int = 3
    validation_prompts: int = 6
    prompt: str | None = None
    rank: int = 8
    epochs: int = 300
    lr: float = 2e-3
    seed: int = 0
    timing_runs: int = 3
    threads: int = 1
    fps: int = 4
    scale: int = 4
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model={self.model!r:.80}: must be a model reference such as 'toy:wan'")
        if type(self.calibration_prompts) is not int or not 3 <= self.calibration_prompts <= 5:
            raise ValueError(f"calibration_prompts={self.calibration_prompts!r:.80}: LearniBridge calibrates from 3-5 "
                             "prompts")
        if type(self.interval) is not int or self.interval < 2:
            raise ValueError(f"interval={self.interval!r:.80}: must be an integer >= 2 (1 would bridge nothing)")
        if self.steps is not None and (type(self.steps) is not int or not 2 <= self.steps <= MAX_STEPS):
            raise ValueError(f"steps={self.steps!r:.80}: must be an integer in 2..{MAX_STEPS} (a bridge needs a full "
                             "step before it), or None for the model's default")
        for name, low, high in (("validation_prompts", 1, MAX_VALIDATION_PROMPTS), ("rank", 1, 1024),
                                ("epochs", 1, 10**6), ("seed", 0, MAX_SEED), ("timing_runs", 1, 20),
                                ("threads", 1, 1024), ("fps", 1, MAX_FPS), ("scale", 1, 16)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{name}={value!r:.80}: must be an integer in {low}..{high}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"lr={self.lr!r:.80}: must be a finite number > 0")
        reserved = {"prompt", "num_inference_steps", "seed", "schedule", "adapters"}  # the demo sets these itself
        if not isinstance(self.extra, dict) or set(self.extra) & reserved or not set(self.extra) <= _REQUEST_FIELDS:
            raise ValueError(f"extra={self.extra!r:.120}: must be a dict of other GenerationRequest fields "
                             f"({sorted(_REQUEST_FIELDS - reserved)})")
        _prompts(self)  # the shown prompt: in the toy grammar, held out


def _prompts(config: DemoConfig) -> tuple[list[str], list[str], str]:
    """(calibration prompts, validation prompts, the shown prompt): the shown one must be a video prompt of the
    toy grammar (the demo scores its adherence) and not one of the calibration prompts. Validation prompts are
    training-split combinations drawn as the held-out protocol draws them (`generalisation.split`), minus the
    calibration prompts and the shown one."""
    from .toy.dataset import calibration_prompts, evaluation_prompts
    from .toy.metric import parse_prompt

    calibration = calibration_prompts("video", n=config.calibration_prompts)
    shown = config.prompt if config.prompt is not None else evaluation_prompts("video", n=1)[0]
    if not isinstance(shown, str) or not shown.strip():
        raise ValueError(f"prompt={shown!r:.80}: must be a non-empty prompt of the toy grammar, e.g. "
                         f"{evaluation_prompts('video', n=1)[0]!r}")
    if parse_prompt(shown)["kind"] != "video":
        raise ValueError(f"prompt {shown!r} describes a still image; the demo shows a video: use "
                         "'... moving <left|right|up|down> ...', e.g. " + repr(evaluation_prompts("video", n=1)[0]))
    if shown in calibration:
        raise ValueError(f"prompt {shown!r} is a calibration prompt; show a held-out one")
    pool = [p for p in calibration_prompts("video", 40, seed=_VALIDATION_POOL_SEED) if p not in calibration + [shown]]
    return calibration, list(dict.fromkeys(pool))[:config.validation_prompts], shown


def _label(frames: np.ndarray, text: str, scale: int) -> np.ndarray:
    """Upscale `(F, H, W, 3)` uint8 frames by `scale` (nearest) and put `text` in a strip above them."""
    from PIL import Image, ImageDraw

    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    strip = np.full((frames.shape[0], 14, big.shape[2], 3), 255, dtype=np.uint8)
    canvas = Image.fromarray(strip[0])
    ImageDraw.Draw(canvas).text((3, 1), text, fill=(0, 0, 0))
    strip[:] = np.asarray(canvas)
    return np.concatenate([strip, big], axis=1)


def side_by_side(panels: dict[str, np.ndarray], scale: int) -> np.ndarray:
    from .io import to_uint8_frames

    labelled = [_label(to_uint8_frames(f), name, scale) for name, f in panels.items()]
    gap = np.full((*labelled[0].shape[:2], 4, 3), 255, dtype=np.uint8)
    row = []
    for i, panel in enumerate(labelled):
        row += [gap, panel] if i else [panel]
    return np.concatenate(row, axis=2)


def _check(out, config: DemoConfig | None) -> tuple[DemoConfig, list[str], list[str], str, GenerationRequest]:
    """Everything the demo can check before any work: the config, its prompts, the output directory, the request."""
    from .storage import check_writable_dir

    config = DemoConfig() if config is None else config
    if not isinstance(config, DemoConfig):
        raise ValueError(f"config must be a DemoConfig, got {type(config).__name__}")
    calibration, validation, shown = _prompts(config)  # grammar, held out
    check_writable_dir(out, "demo output directory")
    request = GenerationRequest(shown, num_inference_steps=config.steps, seed=config.seed, **config.extra)
    return config, calibration, validation, shown, request


def _first_block_runs(transformer):
    """A context counting the runs of the transformer's first block (its first norm: a skipped block never
    reaches it), i.e. the full transformer calls of a generation under any of the demo's methods."""
    import contextlib

    from .evaluate.cost import probe_modules

    @contextlib.contextmanager
    def count():
        runs = [0]
        handle = probe_modules(transformer)["blocks"][0].register_forward_hook(
            lambda *_: runs.__setitem__(0, runs[0] + 1))
        try:
            yield runs
        finally:
            handle.remove()

    return count()


def _peer_calls(calls: dict, full: int) -> dict:
    """The peer's transformer calls: the bridge is off, so its counters see every call as full; `full` (the
    calls that ran the first block) splits them into computed and Taylor-predicted ones."""
    total = calls.get("full", 0) + calls.get("bridged", 0)
    return {"full": full, "taylor_predicted": total - full}


def run_demo(out: str | Path, config: DemoConfig | None = None, progress: bool = True) -> dict:
    config, calibration, validation, shown, request = _check(out, config)
    from .bridge import Schedule
    from .calibrate import RecordConfig, record_pairs, train_adapters
    from .evaluate.generalisation import VALIDATION_SEED, recipe_train
    from .evaluate.metrics import psnr, ssim
    from .evaluate.peers import MethodSetup, get_method
    from .generation import Generator, GeneratorConfig, load_pipeline
    from .toy.metric import adherence
    import torch

    out = Path(out)
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    loaded = load_pipeline(config.model, device="cpu", dtype="float32")
    request = request.resolve(loaded.info)  # sizes and steps against the model, before calibrating
    out.mkdir(parents=True, exist_ok=True)
    schedule = Schedule.periodic(request.num_inference_steps, config.interval)
    call = {k: v for k, v in request.call_kwargs(loaded.info).items() if k != "num_inference_steps"}

    t = time.perf_counter()
    record = RecordConfig(prompts=tuple(calibration), call_kwargs=call, validation_prompts=tuple(validation),
                          validation_seeds=tuple(VALIDATION_SEED + i for i in range(len(validation))))
    record_pairs(loaded.pipe, schedule, record, out / "pairs", progress=progress)
    train = replace(recipe_train("lbdist", rank=config.rank, epochs=config.epochs), lr=config.lr)
    adapters = train_adapters(loaded.pipe.transformer, out / "pairs", out / "adapters", train, progress=progress)
    calibration_s = time.perf_counter() - t
    info = list(adapters.extra.get("training", {}).values())

    generator = Generator(loaded, GeneratorConfig(adapters={"demo": str(out / "adapters")}))
    branches = generator.info.branches if (call.get("guidance_scale") or 0) > 1 else generator.info.branches[:1]
    peer, setup = get_method("taylorseer_lite"), MethodSetup(loaded.family, schedule.num_steps, tuple(branches))
    variants = {"full compute": {}, "LearniBridge": {"schedule": str(config.interval), "adapters": "demo"},
                "uncalibrated bridge": {"schedule": str(config.interval)}, PEER: {}}
    runs, full_runs, peer_config = {}, {}, None
    # round 0: a warm-up of every method, counting its full calls; then timed rounds, the methods interleaved
    # so that whatever else runs on a shared CPU slows them alike; each keeps its fastest round
    for round_ in range(1 + config.timing_runs):
        for name, change in variants.items():
            variant = replace(request, **change)
            if name == PEER:
                peer_config = peer.apply(loaded.pipe, config.interval, setup)  # fresh state every generation
            try:
                if round_:
                    result = generator.generate(variant, keep_latents=True)
                    if name not in runs or result.timings["transformer"] < runs[name].timings["transformer"]:
                        runs[name] = result
                else:
                    with _first_block_runs(loaded.pipe.transformer) as counted:
                        generator.generate(variant)
                    full_runs[name] = counted[0]
            finally:
                if name == PEER:
                    peer.remove(loaded.pipe)

    full = runs["full compute"]
    per_step = full_runs["full compute"] / schedule.num_steps  # transformer calls per full step (guidance branches)
    report = {"model": config.model, "prompt": shown, "calibration_prompts": calibration,
              "validation_prompts": validation, "steps": schedule.num_steps, "schedule": schedule.description,
              "full_steps": len(schedule.full_steps), "interval": config.interval,
              "recipe": adapters.extra.get("recipe"), "train_config": asdict(train),
              "best_epoch_mean": round(float(np.mean([i["best_epoch"] for i in info])), 1) if info else None,
              "peer": {"method": "taylorseer_lite", "label": PEER, "config": peer_config},
              "calibration_seconds": round(calibration_s, 1), "config": asdict(config), "methods": {}}
    for name, run in runs.items():
        latent_err = float((run.latents - full.latents).norm() / full.latents.norm())
        report["methods"][name] = {
            "full_steps": round(full_runs[name] / per_step, 2),
            "transformer_calls": run.calls if name != PEER else _peer_calls(run.calls, full_runs[name]),
            "transformer_seconds": round(run.timings["transformer"], 4),
            "speedup_transformer": round(full.timings["transformer"] / run.timings["transformer"], 2),
            "psnr_db": None if name == "full compute" else round(psnr(run.frames, full.frames), 2),
            "ssim": None if name == "full compute" else round(ssim(run.frames, full.frames), 4),
            "latent_rel_l2": round(latent_err, 5),
            "adherence": adherence(run.frames, shown).score,
        }
    report["total_seconds"] = round(time.perf_counter() - started, 1)

    panels = {("TaylorSeer lite" if name == PEER else name): run.frames for name, run in runs.items()}
    video = side_by_side(panels, config.scale)
    save_video(video, out / "side_by_side.mp4", fps=config.fps)
    save_video(video, out / "side_by_side.gif", fps=config.fps)
    atomic_write(out / "report.json", lambda p: Path(p).write_text(json.dumps(report, indent=2)))
    atomic_write(out / "report.md", lambda p: Path(p).write_text(markdown(report)))
    return report


def markdown(report: dict) -> str:
    lines = [f"# lbdist demo: {report['model']}", "",
             f"Prompt (held out): **{report['prompt']}**  ",
             f"Calibrated (recipe {(report.get('recipe') or {}).get('recipe', '?')}) from "
             f"{len(report['calibration_prompts'])} prompts, early-stopped on {len(report['validation_prompts'])} "
             f"validation prompts (mean best epoch {report['best_epoch_mean']}), in {report['calibration_seconds']} s; "
             f"{report['steps']} steps, bridge schedule {report['schedule']}; {PEER} at cache interval "
             f"{report['interval']}.", "",
             "| method | full steps | transformer time | speedup | PSNR vs full | SSIM | latent rel. L2 | adherence |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["methods"].items():
        psnr = "-" if m["psnr_db"] is None else f"{m['psnr_db']:.2f} dB"
        ssim = "-" if m["ssim"] is None else f"{m['ssim']:.4f}"
        lines.append(f"| {name} | {m['full_steps']:g} | {m['transformer_seconds']:.3f} s | {m['speedup_transformer']:.2f}x | {psnr} | "
                     f"{ssim} | {m['latent_rel_l2']} | {m['adherence']:.2f} |")
    lines += ["", "Full steps: transformer calls that ran every block, per guidance branch (the bridge runs its final",
              f"block at the other steps; {PEER} runs no block there, and computes in its first "
              f"{(report['peer']['config'] or {}).get('disable_cache_before_step', '?')} steps to",
              "estimate its Taylor factors). One prompt, one seed: an anecdote, not a measurement.",
              "Times are wall clock on this machine's CPU in this run (the toy is tiny, so the fixed costs of",
              "embeddings, head and Python weigh more than on a real model on a GPU)."]
    return "\n".join(lines) + "\n"
