"""Loading a pipeline for lbdist: from the Hub, a local diffusers folder, or a model built in code.

Sources:
    `tiny:<family>`   a tiny random-weight pipeline built in code (tests, smoke runs; no files needed)
    `toy:<family>`    the small trained pipeline bundled with lbdist (see lbdist/toy)
    anything else     a Hub id or local folder for `DiffusionPipeline.from_pretrained`
                      (set HF_HUB_OFFLINE=1 to load only from the local cache, without network)
A folder may hold `lbdist_defaults.json` beside `model_index.json`: the call arguments that fit the model
(height, width, num_frames, num_inference_steps, guidance_scale, ...). They are used unless overridden.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import get_spec

DEFAULTS_FILE = "lbdist_defaults.json"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
VIDEO_FAMILIES = ("wan", "hunyuan_video")


@dataclass
class LoadedPipeline:
    """A pipeline with its family and the call arguments that fit it."""

    pipe: object
    family: str
    source: str
    call_defaults: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.family in VIDEO_FAMILIES


def resolve_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(set(DTYPES))} or 'auto'")
    return DTYPES[name]


def resolve_device(name: str | None) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return str(name)


def load_pipeline(source: str, device: str | None = "auto", dtype: str | torch.dtype | None = "auto") -> LoadedPipeline:
    """Load `source` (see module docstring) onto `device` in `dtype`."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    defaults: dict = {}
    if source.startswith("tiny:"):
        from .toy.build import CALL_DEFAULTS, FAMILIES, build_pipeline

        family = source.split(":", 1)[1]
        if family not in FAMILIES:
            raise ValueError(f"unknown family in {source!r}; use tiny:<family> with family in {FAMILIES}")
        pipe = build_pipeline(family, "tiny")
        defaults = dict(CALL_DEFAULTS[family]["tiny"])
    elif source.startswith("toy:"):
        from .toy import load_toy

        pipe, defaults = load_toy(source.split(":", 1)[1])
        defaults = dict(defaults)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch_dtype)
        path = Path(source)
        if (path / DEFAULTS_FILE).is_file():
            defaults = json.loads((path / DEFAULTS_FILE).read_text())
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ValueError(f"{source!r} loaded a {type(pipe).__name__}, which has no `transformer`; lbdist supports "
                         "WanPipeline, HunyuanVideoPipeline and FluxPipeline")
    spec = get_spec(transformer)
    if transformer.dtype != torch_dtype:
        pipe.to(dtype=torch_dtype)
    pipe.to(device)
    return LoadedPipeline(pipe, spec.family, source, defaults)
