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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .io import atomic_write, save_video


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
        if not 3 <= self.calibration_prompts <= 5:
            raise ValueError(f"calibration_prompts={self.calibration_prompts}: LearniBridge calibrates from 3-5 prompts")
        if type(self.interval) is not int or self.interval < 2:
            raise ValueError(f"interval={self.interval!r}: must be an integer >= 2 (1 would bridge nothing)")
        if type(self.scale) is not int or not 1 <= self.scale <= 16:
            raise ValueError(f"scale={self.scale!r}: must be an integer in 1..16")


def _prompts(config: DemoConfig) -> tuple[list[str], str]:
    from .toy.dataset import calibration_prompts, evaluation_prompts

    calibration = calibration_prompts("video", n=config.calibration_prompts)
    shown = config.prompt or evaluation_prompts("video", n=1)[0]
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


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), progress: bool = True) -> dict:
    from .bridge import Schedule
    from .calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters
    from .evaluate.metrics import psnr, ssim
    from .generation import GenerationRequest, Generator, GeneratorConfig, load_pipeline
    from .toy.metric import adherence

    import torch

    out = Path(out)
    calibration, shown = _prompts(config)  # a calibration prompt shown as held out is refused before any work
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    loaded = load_pipeline(config.model, device="cpu", dtype="float32")
    request = GenerationRequest(shown, num_inference_steps=config.steps, seed=config.seed,
                                **config.extra).resolve(loaded.info)
    steps = request.num_inference_steps
    schedule = Schedule.periodic(steps, config.interval)
    call = request.call_kwargs(loaded.info)
    call.pop("num_inference_steps")

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
              "steps": steps, "schedule": schedule.description, "full_steps": len(schedule.full_steps),
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
