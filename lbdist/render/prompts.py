"""Reading a prompts file into render items: validated requests with stable ids, and bad lines by line number.

Two formats, chosen by the file name (`.jsonl` / `.ndjson`: JSON lines; anything else: text):

    # prompts.txt: one prompt per line; blank lines and lines starting with '#' are skipped
    a red circle moving left
    a blue square moving up

    # prompts.jsonl: one JSON object per line; "prompt" is required, every other key overrides the batch's defaults
    {"prompt": "a red circle moving left", "seed": 7, "steps": 30, "schedule": "5"}
    {"id": "shot-012", "prompt": "a blue square", "height": 480, "width": 832, "num_frames": 33, "output_format": "gif"}

Each line becomes a `GenerationRequest` (the batch defaults, then the line's overrides) and is validated alone
here, before anything renders: a line that does not parse or names a bad value is reported with its line number
and left out; the rest renders. Checks that need the model (sizes against the VAE factor, frames `4k+1`) run on
the actor and fail only that item.

Stable ids: a line's `"id"` (letters, digits, `._-`), or the first 16 hex digits of the SHA-256 of the model
reference and the normalised request (its fields as canonical JSON). The same request renders to the same file on
every run and in any line order, so a rerun recognises finished items; two lines asking for the very same
request (same prompt, seed and settings) are one item (the later one is reported as a repeat).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..generation.request import GenerationRequest

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# keys a JSON line may hold -> GenerationRequest field (short names first, the request's own names also work)
LINE_KEYS = {"prompt": "prompt", "seed": "seed", "height": "height", "width": "width", "num_frames": "num_frames",
             "frames": "num_frames", "steps": "num_inference_steps", "num_inference_steps": "num_inference_steps",
             "guidance": "guidance_scale", "guidance_scale": "guidance_scale", "schedule": "schedule",
             "adapters": "adapters", "output_format": "output_format", "negative_prompt": "negative_prompt",
             "fps": "fps", "allow_uncovered": "allow_uncovered"}


@dataclass(frozen=True)
class RenderItem:
    """One thing to render: its stable id, its line in the prompts file (1-based) and its request."""

    id: str
    line: int
    request: GenerationRequest

    def to_row(self) -> dict:
        """The plain-data row that travels to the actors (one JSON string column, so no schema surprises)."""
        return {"item": json.dumps({"id": self.id, "line": self.line, "request": self.request.to_dict()})}

    @classmethod
    def from_row(cls, text: str) -> "RenderItem":
        data = json.loads(text)
        return cls(data["id"], int(data["line"]), GenerationRequest.from_dict(data["request"]))


@dataclass(frozen=True)
class LineError:
    """A line of the prompts file that will not render: its number and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class PromptFile:
    """What a prompts file holds: the items to render, the bad lines, and repeated requests (rendered once)."""

    items: tuple[RenderItem, ...]
    errors: tuple[LineError, ...] = ()
    repeats: tuple[LineError, ...] = ()
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def request_id(request: GenerationRequest, model_key: str) -> str:
    """The stable id of a request for a model: 16 hex digits of SHA-256 over canonical JSON."""
    text = json.dumps({"model": model_key, "request": request.to_dict()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _line_fields(data: Any) -> tuple[dict, str | None]:
    """GenerationRequest fields and the user id of one JSON line; ValueError naming the bad key."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON line must be an object like {{\"prompt\": \"...\"}}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(LINE_KEYS) - {"id"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: id, {', '.join(sorted(LINE_KEYS))}")
    if "prompt" not in data:
        raise ValueError("no \"prompt\" key")
    user_id = data.get("id")
    if user_id is not None and (not isinstance(user_id, str) or not ID_RE.fullmatch(user_id)):
        raise ValueError(f"id {user_id!r} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter "
                         "or digit): it names the output file")
    fields = {}
    for key, value in data.items():
        if key != "id":
            name = LINE_KEYS[key]
            if name in fields:
                raise ValueError(f"{key!r} repeats another key for the same setting ({name})")
            fields[name] = value
    return fields, user_id


def parse_line(text: str, *, jsonl: bool, defaults: Mapping[str, Any]) -> tuple[GenerationRequest, str | None]:
    """One non-comment line -> (request, user id or None); ValueError with the reason."""
    if jsonl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        fields, user_id = _line_fields(data)
    else:
        fields, user_id = {"prompt": text}, None
    return GenerationRequest(**{**defaults, **fields}), user_id


def parse_prompts(text: str, *, jsonl: bool, defaults: Mapping[str, Any] | None = None, model_key: str = "",
                  source: str = "") -> PromptFile:
    """Parse a prompts file's text. `defaults`: GenerationRequest fields every line starts from (a line's own
    keys override them); `model_key`: the model reference, part of every hashed id."""
    defaults = dict(defaults or {})
    if "prompt" in defaults:
        raise ValueError("defaults must not hold a prompt: every line gives its own")
    GenerationRequest("defaults check", **defaults)  # a bad default fails once, naming the field
    items: list[RenderItem] = []
    errors: list[LineError] = []
    repeats: list[LineError] = []
    seen: dict[str, tuple[int, GenerationRequest]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            request, user_id = parse_line(line, jsonl=jsonl, defaults=defaults)
        except (ValueError, TypeError) as exc:
            errors.append(LineError(number, str(exc)))
            continue
        item_id = user_id or request_id(request, model_key)
        if item_id in seen:
            first, earlier = seen[item_id]
            if earlier == request:
                repeats.append(LineError(number, f"repeats line {first} (same request, id {item_id}): rendered once"))
            else:
                errors.append(LineError(number, f"id {item_id!r} is already used by line {first} for another request"))
            continue
        seen[item_id] = (number, request)
        items.append(RenderItem(item_id, number, request))
    return PromptFile(tuple(items), tuple(errors), tuple(repeats), source)


def read_prompts(path: str, *, defaults: Mapping[str, Any] | None = None, model_key: str = "") -> PromptFile:
    """Read and parse a prompts file (a local path or URI); ValueError if it is missing or holds no line at all."""
    from .. import storage

    if not storage.exists(path) or storage.isdir(path):
        raise ValueError(f"prompts file {path!r} does not exist (give a .txt file, one prompt per line, or a "
                         ".jsonl file, one JSON object per line)")
    text = storage.read_text(path)
    jsonl = str(path).lower().endswith(JSONL_SUFFIXES)
    parsed = parse_prompts(text, jsonl=jsonl, defaults=defaults, model_key=model_key, source=str(path))
    if not parsed.items and not parsed.errors:
        raise ValueError(f"prompts file {path!r} holds no prompts (blank lines and '#' comments are skipped)")
    return parsed
