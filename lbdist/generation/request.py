"""`GenerationRequest` (validated, frozen), `ModelInfo` (what a request is checked against) and `GenerationResult`.

A request is validated twice: on construction, alone (types and ranges: a bad seed or an empty prompt fails before
any model exists), and by `resolve(info)` against the model that will run it (frames `t k + 1` for video, sizes
a multiple of the model's factor, an output format the model can produce, the schedule against the step count),
which also fills every field left None with the model's default. The same objects travel to Ray workers, Serve
replicas and batch renderers (plain data, picklable, `to_dict` / `from_dict` for JSON), so every front end refuses
the same bad input with the same one-line message.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np

from ..bridge.schedule import Schedule

VIDEO_FORMATS = ("mp4", "gif")
IMAGE_FORMATS = ("png",)
OUTPUT_FORMATS = VIDEO_FORMATS + IMAGE_FORMATS + ("np",)
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_FRAMES = 1025
MAX_GUIDANCE = 50.0
MAX_SEED = 2**63 - 1
_SCHEDULE_RE = re.compile(r"\d+|periodic:\d+(?::[wz]=\d+)*|steps:\d+(?:,\d+)*")


class GenerationCancelled(RuntimeError):
    """A generation was cancelled at a step boundary (on every rank of a group)."""

    def __init__(self, step: int, total: int):
        self.step, self.total = step, total
        super().__init__(f"generation cancelled after step {step} of {total}")

    def __reduce__(self):  # travels back from Ray workers intact
        return type(self), (self.step, self.total)


def _int(name: str, value, low: int, high: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True)
class ModelInfo:
    """What requests are checked against: a loaded model's family, size rules and defaults (plain data).

    family: model family (`wan`, `hunyuan_video`, `flux`, ...); is_video: video or image output.
    pixel_multiple: height and width must be multiples of it (VAE factor times the spatial patch).
    frame_rule: temporal factor t (frames must be t k + 1); 0 for images.
    defaults: the call arguments that fit the model (height, width, num_frames, num_inference_steps,
        guidance_scale, plus family extras such as max_sequence_length or prompt_template).
    branches: guidance branches the model runs as separate calls with guidance on.
    heads: attention heads (sequence-parallel checks); source: the model reference it was loaded from.
    """

    family: str
    is_video: bool
    pixel_multiple: int
    frame_rule: int
    defaults: Mapping[str, Any] = field(default_factory=dict)
    branches: tuple[str, ...] = ("cond",)
    heads: int = 1
    source: str = ""

    @property
    def formats(self) -> tuple[str, ...]:
        return (VIDEO_FORMATS if self.is_video else IMAGE_FORMATS) + ("np",)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Fields left None take the model's default when the request is resolved.

    Attributes:
        prompt: the text prompt (1..4000 characters).
        negative_prompt: the negative prompt of true-CFG models (Wan); None: the pipeline's default.
        height, width: output size in pixels (multiples of the model's factor, at most 8192).
        num_frames: video frames (t k + 1, e.g. 81 for Wan2.1); images must leave it None or 1.
        num_inference_steps: denoising steps (1..1000).
        guidance_scale: guidance (0..50).
        seed: seed of the initial noise (0..2^63-1); the same seed gives the same output on any rank layout.
        schedule: the bridge schedule: "N", "periodic:N[:w=W][:z=Z]" or "steps:0,5,..."; None: full compute.
        adapters: adapter-set id (a name the Generator knows, a directory, a URI or a Hub id); None with a
            schedule runs the uncalibrated bridge.
        allow_uncovered: accept an adapter set that covers only part of the schedule (the rest uncalibrated).
        output_format: "mp4" / "gif" (video), "png" (image) or "np" (frames only); None: mp4 or png.
        fps: frames per second of a written video (1..120).
    """

    prompt: str
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    schedule: str | None = None
    adapters: str | None = None
    allow_uncovered: bool = False
    output_format: str | None = None
    fps: int = 16

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {self.prompt!r}")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt has {len(self.prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
        if self.negative_prompt is not None and (not isinstance(self.negative_prompt, str)
                                                 or len(self.negative_prompt) > MAX_PROMPT_CHARS):
            raise ValueError(f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS} characters or None")
        _int("height", self.height, 1, MAX_SIDE)
        _int("width", self.width, 1, MAX_SIDE)
        _int("num_frames", self.num_frames, 1, MAX_FRAMES)
        _int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        _int("seed", self.seed, 0, MAX_SEED, allow_none=False)
        _int("fps", self.fps, 1, 120, allow_none=False)
        g = self.guidance_scale
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
                raise ValueError(f"guidance_scale must be a number in 0..{MAX_GUIDANCE:g}, got {g!r}")
            object.__setattr__(self, "guidance_scale", float(g))
        if self.schedule is not None:
            if not isinstance(self.schedule, str) or not _SCHEDULE_RE.fullmatch(self.schedule.strip()):
                raise ValueError(f"schedule {self.schedule!r} is not a schedule: use 'N', 'periodic:N[:w=W][:z=Z]' "
                                 "or 'steps:0,5,10' (or None for full compute)")
            object.__setattr__(self, "schedule", self.schedule.strip())
        if self.adapters is not None:
            if not isinstance(self.adapters, str) or not self.adapters.strip():
                raise ValueError(f"adapters must be a non-empty adapter-set id or None, got {self.adapters!r}")
            if self.schedule is None:
                raise ValueError("adapters were given without a schedule: pass the schedule they were calibrated for")
        if not isinstance(self.allow_uncovered, bool):
            raise ValueError(f"allow_uncovered must be true or false, got {self.allow_uncovered!r}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")

    # --- against a model -------------------------------------------------------------------------------------
    def resolve(self, info: ModelInfo) -> "GenerationRequest":
        """This request with the model's defaults filled in, checked against the model (ValueError otherwise)."""
        d = info.defaults
        steps = self.num_inference_steps or int(d.get("num_inference_steps", 50))
        height, width = self.height or d.get("height"), self.width or d.get("width")
        if height is None or width is None:
            raise ValueError(f"{info.family}: give height and width (the model has no default size)")
        for name, value in (("height", height), ("width", width)):
            if value % info.pixel_multiple:
                raise ValueError(f"{name}={value} is not a multiple of {info.pixel_multiple} ({info.family}: VAE factor x "
                                 f"patch); use {value // info.pixel_multiple * info.pixel_multiple or info.pixel_multiple} "
                                 f"or {(value // info.pixel_multiple + 1) * info.pixel_multiple}")
        frames = self.num_frames
        if info.is_video:
            frames = frames or int(d.get("num_frames", 1 + info.frame_rule))
            if (frames - 1) % info.frame_rule:
                k = (frames - 1) // info.frame_rule
                raise ValueError(f"num_frames={frames}: {info.family} needs {info.frame_rule}k+1 frames "
                                 f"(e.g. {info.frame_rule * k + 1} or {info.frame_rule * (k + 1) + 1})")
        elif frames not in (None, 1):
            raise ValueError(f"num_frames={frames}: {info.family} makes images; leave num_frames unset (or 1)")
        fmt = self.output_format or info.formats[0]
        if fmt not in info.formats:
            raise ValueError(f"output_format {fmt!r} does not fit {info.family} ({'video' if info.is_video else 'image'}); "
                             f"use one of {info.formats}")
        guidance = self.guidance_scale if self.guidance_scale is not None else d.get("guidance_scale")
        resolved = replace(self, height=int(height), width=int(width), num_frames=frames if info.is_video else None,
                           num_inference_steps=steps, output_format=fmt,
                           guidance_scale=None if guidance is None else float(guidance))
        resolved.bridge_schedule()  # raises for a schedule that does not fit the step count
        return resolved

    def bridge_schedule(self) -> Schedule | None:
        """The parsed schedule (None for full compute); needs `num_inference_steps` (resolve first)."""
        if self.schedule is None:
            return None
        if self.num_inference_steps is None:
            raise ValueError("resolve the request against a model before parsing its schedule")
        schedule = Schedule.parse(self.schedule, self.num_inference_steps)
        if not schedule.bridged_steps:
            raise ValueError(f"schedule {self.schedule!r} over {self.num_inference_steps} steps bridges no step "
                             "(interval 1, or every step listed): use an interval >= 2, or no schedule for full compute")
        return schedule

    def call_kwargs(self, info: ModelInfo) -> dict:
        """Pipeline call arguments of a resolved request (the model's extras, such as max_sequence_length, kept)."""
        out = {k: v for k, v in info.defaults.items() if k not in _REQUEST_KEYS}
        out.update(height=self.height, width=self.width, num_inference_steps=self.num_inference_steps)
        if info.is_video:
            out["num_frames"] = self.num_frames
        if self.guidance_scale is not None:
            out["guidance_scale"] = self.guidance_scale
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        return out

    # --- JSON ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown request fields {unknown}; allowed: {sorted(f.name for f in fields(cls))}")
        return cls(**data)


_REQUEST_KEYS = {"height", "width", "num_frames", "num_inference_steps", "guidance_scale", "negative_prompt"}


@dataclass
class GenerationResult:
    """What one generation produced.

    frames: float32 `(F, H, W, 3)` in [0, 1] (F = 1 for images); `uint8()` converts.
    request: the resolved request (every default filled in).
    timings: seconds per stage: `text_encoders`, `denoise`, `decode`, `transformer` (inside the transformer,
        part of denoise), `total`.
    calls: transformer calls `full`, `bridged` and `calibrated` (bridged with an adapter), over all branches.
    steps: for each denoising step of the first branch, "full", "bridged" or "calibrated".
    latents: the final latents (when asked for; benchmarks and tests compare them).
    """

    frames: np.ndarray
    request: GenerationRequest
    timings: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    latents: Any = None

    def uint8(self) -> np.ndarray:
        from ..io import to_uint8_frames

        return to_uint8_frames(self.frames)

    def save(self, path) -> str:
        """Write the frames to a path or URI (.mp4 / .gif / .png) at the request's fps, atomically."""
        from ..io import save_output

        return save_output(self.frames, path, fps=self.request.fps)

    def summary(self) -> str:
        """One line: steps and how they ran, calls, and times."""
        c, t = self.calls, self.timings
        counts = {k: self.steps.count(k) for k in ("full", "bridged", "calibrated")}
        return (f"{self.request.num_inference_steps} steps (full {counts['full']}, calibrated {counts['calibrated']}, "
                f"uncalibrated bridged {counts['bridged']}) | transformer calls full {c.get('full', 0)}, bridged "
                f"{c.get('bridged', 0)} | transformer {t.get('transformer', 0):.3f} s | total {t.get('total', 0):.3f} s")
