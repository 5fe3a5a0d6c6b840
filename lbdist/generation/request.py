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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np

from ..bridge.schedule import FORMS, Schedule, check_text

VIDEO_FORMATS = ("mp4", "gif")
IMAGE_FORMATS = ("png",)
OUTPUT_FORMATS = VIDEO_FORMATS + IMAGE_FORMATS + ("np",)
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_FRAMES = 1025
MAX_GUIDANCE = 50.0
MAX_SEED = 2**63 - 1
MAX_FPS = 120
MAX_HEADS = 1 << 16


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
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r:.80}")


def _text(name: str, value, required: bool) -> None:
    """A prompt-like string: a str (non-blank if required) of at most MAX_PROMPT_CHARS, encodable as UTF-8."""
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value.strip()):
        what = "a non-empty string" if required else f"a string or None"
        raise ValueError(f"{name} must be {what}, got {value!r:.80}")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"{name} has {len(value)} characters ({value[:40]!r}...); at most {MAX_PROMPT_CHARS} "
                         "are allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates (undecodable bytes on a command line) break tokenizers
        raise ValueError(f"{name} {value!r:.80} is not valid Unicode text ({err.reason} at character "
                         f"{err.start}); give UTF-8 text") from None


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

    def __post_init__(self):
        if not isinstance(self.family, str) or not self.family:
            raise ValueError(f"ModelInfo.family must be a non-empty string, got {self.family!r:.80}")
        if not isinstance(self.is_video, bool):
            raise ValueError(f"ModelInfo.is_video must be True or False, got {self.is_video!r:.80}")
        _int("ModelInfo.pixel_multiple", self.pixel_multiple, 1, MAX_SIDE, allow_none=False)
        low, high = (1, MAX_FRAMES - 1) if self.is_video else (0, 0)
        _int(f"ModelInfo.frame_rule ({'video' if self.is_video else 'images: 0'})", self.frame_rule, low, high,
             allow_none=False)
        _int("ModelInfo.heads", self.heads, 1, MAX_HEADS, allow_none=False)
        if not isinstance(self.defaults, Mapping):
            raise ValueError(f"ModelInfo.defaults must be a mapping of call arguments, got {self.defaults!r:.80}")
        if (not isinstance(self.branches, tuple) or not self.branches
                or not all(isinstance(b, str) and b for b in self.branches)):
            raise ValueError(f"ModelInfo.branches must be a non-empty tuple of names, got {self.branches!r:.80}")

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
        _text("prompt", self.prompt, required=True)
        _text("negative_prompt", self.negative_prompt, required=False)
        _int("height", self.height, 1, MAX_SIDE)
        _int("width", self.width, 1, MAX_SIDE)
        _int("num_frames", self.num_frames, 1, MAX_FRAMES)
        _int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        _int("seed", self.seed, 0, MAX_SEED, allow_none=False)
        _int("fps", self.fps, 1, MAX_FPS, allow_none=False)
        g = self.guidance_scale
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
                raise ValueError(f"guidance_scale must be a number in 0..{MAX_GUIDANCE:g}, got {g!r:.80}")
            object.__setattr__(self, "guidance_scale", float(g))
        self._check_bridge()
        if self.output_format is not None and (not isinstance(self.output_format, str)
                                               or self.output_format not in OUTPUT_FORMATS):
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r:.80}")

    def _check_bridge(self) -> None:
        if self.schedule is not None:
            try:
                object.__setattr__(self, "schedule", check_text(self.schedule))
            except ValueError:
                if not isinstance(self.schedule, str):
                    raise
                raise ValueError(f"schedule {self.schedule!r:.120} is not a schedule: use {FORMS} with ASCII digits "
                                 "(or None for full compute)") from None
        if self.adapters is not None:
            if not isinstance(self.adapters, str) or not self.adapters.strip():
                raise ValueError(f"adapters must be a non-empty adapter-set id or None, got {self.adapters!r:.80}")
            if self.schedule is None:
                raise ValueError(f"adapters were given without a schedule (adapters={self.adapters!r:.80}): pass "
                                 "the schedule they were calibrated for")
        if not isinstance(self.allow_uncovered, bool):
            raise ValueError(f"allow_uncovered must be true or false, got {self.allow_uncovered!r:.80}")

    # --- against a model -------------------------------------------------------------------------------------
    def resolve(self, info: ModelInfo) -> "GenerationRequest":
        """This request with the model's defaults filled in, checked against the model (ValueError otherwise).

        The model's defaults pass the same checks as the request's own fields (a folder's lbdist_defaults.json
        is user input too), then the model's rules: sizes, frames, output format, the schedule against the steps.
        """
        if not isinstance(info, ModelInfo):
            raise ValueError(f"resolve needs a ModelInfo (Generator.info, load_pipeline(...).info), got "
                             f"{type(info).__name__}")
        d = {k: v for k, v in info.defaults.items() if v is not None}  # a default of None is no default
        filled = {name: getattr(self, name) if getattr(self, name) is not None else d.get(name)
                  for name in ("height", "width", "guidance_scale")}
        filled["num_inference_steps"] = self.num_inference_steps or d.get("num_inference_steps", 50)
        if filled["height"] is None or filled["width"] is None:
            raise ValueError(f"{info.family}: give height and width (the model has no default size)")
        if info.is_video:
            filled["num_frames"] = self.num_frames or d.get("num_frames", 1 + info.frame_rule)
        elif self.num_frames not in (None, 1):
            raise ValueError(f"num_frames={self.num_frames}: {info.family} makes images; leave num_frames unset (or 1)")
        else:
            filled["num_frames"] = None
        fmt = self.output_format or info.formats[0]
        if fmt not in info.formats:
            kind = "video" if info.is_video else "image"
            raise ValueError(f"output_format {fmt!r} does not fit {info.family} ({kind}); use one of {info.formats}")
        try:
            resolved = replace(self, output_format=fmt, **filled)
        except ValueError as err:  # only a default can be bad here: the request's own fields were checked
            raise ValueError(f"a default of the {info.family} model {info.source!r}: {err}") from None
        resolved._check_model(info)
        resolved.bridge_schedule()  # raises for a schedule that does not fit the step count
        return resolved

    def _check_model(self, info: ModelInfo) -> None:
        m = info.pixel_multiple
        for name, value in (("height", self.height), ("width", self.width)):
            if value % m:
                raise ValueError(f"{name}={value} is not a multiple of {m} ({info.family}: VAE factor x patch); "
                                 f"use {value // m * m or m} or {(value // m + 1) * m}")
        t, frames = info.frame_rule, self.num_frames
        if info.is_video and (frames - 1) % t:
            k = (frames - 1) // t
            raise ValueError(f"num_frames={frames}: {info.family} needs {t}k+1 frames (e.g. {t * k + 1} or "
                             f"{t * (k + 1) + 1})")

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
        """A request from JSON data (a mapping of field names to values); ValueError for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a request must be a mapping (JSON object) of fields, got {type(data).__name__} "
                             f"{data!r:.80}")
        allowed = sorted(f.name for f in fields(cls))
        unknown = [k for k in data if not isinstance(k, str) or k not in allowed]
        if unknown:
            raise ValueError(f"unknown request fields {sorted(map(repr, unknown))}; allowed: {allowed}")
        if "prompt" not in data:
            raise ValueError(f"a request needs a 'prompt' field; got only {sorted(data)}")
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
