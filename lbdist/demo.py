"""The demo: calibrate the bundled Wan-architecture toy from 3 prompts, then show full compute beside
LearniBridge (and the uncalibrated bridge) on a held-out prompt, with measured speed and fidelity.

    lbdist demo --out out/demo            # about 2-4 minutes on 2 CPU cores

Writes `side_by_side.mp4` and `side_by_side.gif` (panels: full compute | LearniBridge | uncalibrated
bridge), `report.json` and `report.md` (steps, full and bridged transformer calls, transformer time and
speedup measured in this run, PSNR / SSIM against full compute, prompt adherence), and keeps the adapter
set and the recorded pairs under `out/` so a rerun skips calibration.
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


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    model: pipeline source (`toy:wan` is the bundled trained toy; `tiny:wan` a random one for tests).
    interval: the bridge schedule's N (full at 0, N, 2N, ...).
    steps: denoising steps (None: the model's default).
    calibration_prompts: how many calibration prompts (the method needs 3-5).
    prompt: the held-out prompt to show (None: the first evaluation prompt of the toy grammar).
    rank, epochs, lr: LoRA training budget per bridge (kept small so the demo runs in minutes on a CPU).
    seed: sampling seed of the shown generation.
    threads: torch CPU threads (1 by default: the toy's matrices are small, and one thread per process is
        fastest and is not slowed down by whatever else runs on the machine).
    """

    model: str = "toy:wan"
    interval: int = 5
    steps: int | None = None
    calibration_prompts: int = 3
    prompt: str | None = None
    rank: int = 8
    epochs: int = 40
    lr: float = 1e-3
    seed: int = 0
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
        for name, low, high in (("rank", 1, 1024), ("epochs", 1, 10**6), ("seed", 0, MAX_SEED), ("threads", 1, 1024),
                                ("fps", 1, MAX_FPS), ("scale", 1, 16)):
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


def _prompts(config: DemoConfig) -> tuple[list[str], str]:
    """(calibration prompts, the shown prompt): the shown one must be a video prompt of the toy grammar (the
    demo scores its adherence) and not one of the calibration prompts."""
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
    return calibration, shown


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


def _check(out, config: DemoConfig | None) -> tuple[DemoConfig, list[str], str, GenerationRequest]:
    """Everything the demo can check before any work: the config, its prompts, the output directory, the request."""
    from .storage import check_writable_dir

    config = DemoConfig() if config is None else config
    if not isinstance(config, DemoConfig):
        raise ValueError(f"config must be a DemoConfig, got {type(config).__name__}")
    calibration, shown = _prompts(config)  # grammar, held out
    check_writable_dir(out, "demo output directory")
    request = GenerationRequest(shown, num_inference_steps=config.steps, seed=config.seed, **config.extra)
    return config, calibration, shown, request


def run_demo(out: str | Path, config: DemoConfig | None = None, progress: bool = True) -> dict:
    config, calibration, shown, request = _check(out, config)
    from .bridge import Schedule
    from .calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters
    from .evaluate.metrics import psnr, ssim
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
    record_pairs(loaded.pipe, schedule, RecordConfig(prompts=tuple(calibration), call_kwargs=call),
                 out / "pairs", progress=progress)
    train = TrainConfig(rank=config.rank, alpha=2.0 * config.rank, lr=config.lr, max_epochs=config.epochs,
                        eval_every=10, patience=3)
    train_adapters(loaded.pipe.transformer, out / "pairs", out / "adapters", train, progress=progress)
    calibration_s = time.perf_counter() - t

    generator = Generator(loaded, GeneratorConfig(adapters={"demo": str(out / "adapters")}))
    variants = {"full compute": {}, "LearniBridge": {"schedule": str(config.interval), "adapters": "demo"},
                "uncalibrated bridge": {"schedule": str(config.interval)}}
    runs = {}
    for name, fields in variants.items():
        variant = replace(request, **fields)
        generator.generate(variant)  # warm-up
        runs[name] = generator.generate(variant, keep_latents=True)

    full = runs["full compute"]
    report = {"model": config.model, "prompt": shown, "calibration_prompts": calibration,
              "steps": schedule.num_steps, "schedule": schedule.description, "full_steps": len(schedule.full_steps),
              "calibration_seconds": round(calibration_s, 1), "config": asdict(config), "methods": {}}
    for name, run in runs.items():
        latent_err = float((run.latents - full.latents).norm() / full.latents.norm())
        report["methods"][name] = {
            "transformer_calls": run.calls,
            "transformer_seconds": round(run.timings["transformer"], 4),
            "speedup_transformer": round(full.timings["transformer"] / run.timings["transformer"], 2),
            "psnr_db": None if name == "full compute" else round(psnr(run.frames, full.frames), 2),
            "ssim": None if name == "full compute" else round(ssim(run.frames, full.frames), 4),
            "latent_rel_l2": round(latent_err, 5),
            "adherence": adherence(run.frames, shown).score,
        }
    report["total_seconds"] = round(time.perf_counter() - started, 1)

    panels = {name: run.frames for name, run in runs.items()}
    video = side_by_side(panels, config.scale)
    save_video(video, out / "side_by_side.mp4", fps=config.fps)
    save_video(video, out / "side_by_side.gif", fps=config.fps)
    atomic_write(out / "report.json", lambda p: Path(p).write_text(json.dumps(report, indent=2)))
    atomic_write(out / "report.md", lambda p: Path(p).write_text(markdown(report)))
    return report


def markdown(report: dict) -> str:
    lines = [f"# lbdist demo: {report['model']}", "",
             f"Prompt (held out): **{report['prompt']}**  ",
             f"Calibrated from {len(report['calibration_prompts'])} prompts in {report['calibration_seconds']} s; "
             f"{report['steps']} steps, schedule {report['schedule']} ({report['full_steps']} full steps).", "",
             "| method | transformer time | speedup | PSNR vs full | SSIM | latent rel. L2 | adherence |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["methods"].items():
        psnr = "-" if m["psnr_db"] is None else f"{m['psnr_db']:.2f} dB"
        ssim = "-" if m["ssim"] is None else f"{m['ssim']:.4f}"
        lines.append(f"| {name} | {m['transformer_seconds']:.3f} s | {m['speedup_transformer']:.2f}x | {psnr} | "
                     f"{ssim} | {m['latent_rel_l2']} | {m['adherence']:.2f} |")
    lines += ["", "Times are wall clock on this machine's CPU in this run (the toy is tiny, so the fixed costs of",
              "embeddings, head and Python weigh more than on a real model on a GPU)."]
    return "\n".join(lines) + "\n"
