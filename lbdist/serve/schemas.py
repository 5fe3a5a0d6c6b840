"""HTTP request and response models of the jobs API (OpenAI Videos / Images shape) and the error body.

Request models check JSON types only (strict: `"5"` is not an integer, unknown fields are refused, answered 422);
`to_generation_request` then builds a `lbdist.GenerationRequest`, whose own validation checks every range and
rule, so the HTTP API, the CLI and the Python API refuse the same bad value with the same message (answered 400,
with the field in `param`). Every error body has the OpenAI shape with a stable `code`:

    {"error": {"message": "seed must be an integer in 0..9223372036854775807, got -1", "type": "invalid_request_error",
               "param": "seed", "code": "invalid_value"}}
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..generation.request import GenerationRequest

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")
_SCHEDULE_WORDS = re.compile(r"interval|full.steps|warmup|cooldown|step 0 must|out of range")
_FIELDS = ("prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale",
           "seed", "schedule", "adapters", "allow_uncovered", "output_format", "fps")


class ApiError(Exception):
    """An error answered as JSON: HTTP status, stable code, offending field (param) and a one-line message."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 and self.status != 429 else "server_error"
        if self.status == 429:
            kind = "rate_limit_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _GenerationFields(BaseModel):
    """Fields shared by video and image requests (types only; ranges are checked by GenerationRequest)."""

    model_config = _STRICT

    model: str | None = Field(None, description="Served model name; omit for the application's model.")
    prompt: str = Field(description="Text prompt, 1..4000 characters.")
    negative_prompt: str | None = Field(None, description="Negative prompt (true-CFG models such as Wan).")
    size: str | None = Field(None, description="'WIDTHxHEIGHT' (OpenAI form), or give width and height; each a "
                                               "multiple of the model's factor (16 for Wan / HunyuanVideo / FLUX).")
    width: int | None = Field(None, description="Width in pixels (multiple of the model's factor).")
    height: int | None = Field(None, description="Height in pixels (multiple of the model's factor).")
    num_inference_steps: int | None = Field(None, description="Denoising steps, 1..1000 (default: the model's).")
    guidance_scale: float | None = Field(None, description="Guidance scale, 0..50 (default: the model's).")
    seed: int = Field(0, description="Seed of the initial noise, 0..2^63-1; same seed, same output.")
    schedule: str | None = Field(None, description="Bridge schedule: 'N', 'periodic:N[:w=W][:z=Z]' or "
                                 "'steps:0,5,...'. Omitted: the service default; null: full compute.")
    adapters: str | None = Field(None, description="Adapter-set id (GET /health lists them); it must have been "
                                 "calibrated for this model and schedule.")
    allow_uncovered: bool = Field(False, description="Accept an adapter set that covers only part of the "
                                  "schedule (the other bridged steps run uncalibrated).")


class VideoCreateRequest(_GenerationFields):
    """POST /v1/videos: one video job."""

    num_frames: int | None = Field(None, description="Frames, t*k+1 (4k+1 for Wan / HunyuanVideo: 5, 9, ..., 81).")
    fps: int = Field(16, description="Frames per second of the written video, 1..120.")
    output_format: str | None = Field(None, description="mp4 (default) or gif.")


class ImageCreateRequest(_GenerationFields):
    """POST /v1/images/generations: one image, answered synchronously."""

    n: int = Field(1, description="Number of images; only 1 (send several requests for more).")
    response_format: str = Field("b64_json", description="b64_json (JSON with the PNG in base64) or png "
                                                          "(the PNG bytes themselves).")


class JobError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = Field(description="Stable error code (generation_failed, replica_died, lease_expired, ...).")
    message: str = Field(description="What went wrong, in one line.")


class VideoJob(BaseModel):
    """A video job (`object: video`), as returned by POST, GET and DELETE /v1/videos."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Job id (video_...); ids sort by creation time.")
    object: Literal["video"] = "video"
    model: str = Field(description="Served model name.")
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    progress: int = Field(description="Percent of denoising steps done, 0..100.")
    steps_done: int = Field(description="Denoising steps done (step i of steps_total).")
    steps_total: int = Field(description="Denoising steps of the job.")
    elapsed_s: float | None = Field(description="Seconds since the job started running (or ran, once finished).")
    eta_s: float | None = Field(description="Estimated seconds left (in_progress only).")
    created_at: float = Field(description="Unix time the job was accepted.")
    started_at: float | None = None
    completed_at: float | None = None
    size: str = Field(description="WIDTHxHEIGHT of the video.")
    num_frames: int | None = None
    seconds: str | None = Field(None, description="Duration of the video (num_frames / fps), as OpenAI writes it.")
    output_format: str
    attempts: int = Field(description="Times a replica started the job (> 1 after a retry).")
    request: dict = Field(description="The resolved generation request (every default filled in).")
    result: dict | None = Field(None, description="Once completed: bytes, timings, transformer calls, steps.")
    error: JobError | None = None


class VideoList(BaseModel):
    model_config = ConfigDict(frozen=True)

    object: Literal["list"] = "list"
    data: list[VideoJob]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ImageData(BaseModel):
    model_config = ConfigDict(frozen=True)

    b64_json: str = Field(description="The PNG, base64-encoded.")


class ImageResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    created: int
    data: list[ImageData]
    timings: dict = Field(default_factory=dict, description="Seconds per stage of the generation.")
    calls: dict = Field(default_factory=dict, description="Transformer calls: full, bridged, calibrated.")


# --- conversion --------------------------------------------------------------------------------------------
def to_generation_request(body: _GenerationFields, *, default_schedule: str | None = None,
                          default_adapters: str | None = None, output_format: str | None = None
                          ) -> GenerationRequest:
    """The `GenerationRequest` of a request body; its ValueError becomes ApiError(400, invalid_value, param)."""
    fields = body.model_dump(include=set(_FIELDS), exclude_unset=False)
    explicit = body.model_fields_set
    if "schedule" not in explicit and "adapters" not in explicit:
        fields["schedule"] = default_schedule
        if default_adapters is not None:
            fields["adapters"] = default_adapters
    if body.size is not None:
        if body.width is not None or body.height is not None:
            raise ApiError(400, "invalid_value", "give size or width/height, not both", "size")
        match = _SIZE_RE.fullmatch(body.size.strip())
        if not match:
            raise ApiError(400, "invalid_value", f"size must be 'WIDTHxHEIGHT' (e.g. '832x480'), got {body.size!r}",
                           "size")
        fields["width"], fields["height"] = int(match.group(1)), int(match.group(2))
    if output_format is not None:
        fields["output_format"] = output_format
    try:
        return GenerationRequest(**fields)
    except ValueError as exc:
        raise invalid(exc, body.size) from None


def invalid(exc: ValueError, size: str | None = None, schedule: str | None = None) -> ApiError:
    """A GenerationRequest / resolve error as a 400 naming the field (`param`) the message is about."""
    message = str(exc)
    param = param_of(message)
    if param is None and schedule is not None and _SCHEDULE_WORDS.search(message):
        message, param = f"schedule {schedule!r}: {message}", "schedule"
    if size is not None and param in ("width", "height"):
        message, param = f"{message} (from size {size!r})", "size"
    return ApiError(400, "invalid_value", message, param)


def param_of(message: str) -> str | None:
    """The request field an error message is about (messages start with it), or None."""
    if message.startswith("cannot parse schedule"):
        return "schedule"
    match = re.match(r"(\w+)", message)
    if match and match.group(1) in _FIELDS:
        return match.group(1)
    if re.match(r"\w+: give height and width", message):
        return "height"
    return None


def pydantic_error(errors: list[dict[str, Any]], model: type[BaseModel] | None = None) -> ApiError:
    """FastAPI / pydantic request errors as one 422 naming every bad field (`param`: the first)."""
    codes = {"extra_forbidden": "unknown_field", "missing": "missing_field", "json_invalid": "invalid_json"}
    allowed = ", ".join(sorted((model or VideoCreateRequest).model_fields))
    parts, params = [], []
    for e in errors:
        kind = e.get("type", "")
        name = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path")) or "body"
        if kind == "json_invalid":  # loc holds the character position, not a field
            at = e.get("loc", (None, None))[-1]
            parts.append(f"body is not valid JSON at character {at} ({e.get('ctx', {}).get('error', e.get('msg'))})")
            params.append(None)
            continue
        params.append(name)
        if kind == "extra_forbidden":
            parts.append(f"{name}: unknown field; allowed fields: {allowed}")
        elif kind == "missing":
            parts.append(f"{name}: required field missing")
        else:
            parts.append(f"{name}: {e.get('msg')}, got {e.get('input')!r}")
    code = codes.get(errors[0].get("type", ""), "invalid_type") if errors else "invalid_type"
    return ApiError(422, code, "; ".join(parts), params[0] if params else None)


def choose(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ApiError(400, "invalid_value", f"{name} must be one of {list(allowed)}, got {value!r}", name)
    return value
