"""Loading a pipeline for lbdist and describing it (`ModelInfo`): from the Hub, a local folder, or built in code.

Model references:
    `tiny:<family>`   a tiny random-weight pipeline built from the family's spec (tests, smoke runs; no files)
    `toy:<family>`    the small trained pipeline bundled with lbdist (see lbdist/toy)
    a local folder    `DiffusionPipeline.from_pretrained(folder)`
    `owner/name`      a Hub id (HF_HUB_OFFLINE=1 loads from the local cache only, without network)
A folder may hold `lbdist_defaults.json` beside `model_index.json`: the call arguments that fit the model (height,
width, num_frames, num_inference_steps, guidance_scale, ...). Otherwise the pipeline class's own defaults apply.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import get_spec_by_family, spec_for_pipeline
from ..refs import ensure_available, hub_errors, resolve_ref
from .request import ModelInfo

DEFAULTS_FILE = "lbdist_defaults.json"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_CALL_FIELDS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")


@dataclass
class LoadedPipeline:
    """A pipeline with its family and the call arguments that fit it."""

    pipe: object
    family: str
    source: str
    call_defaults: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return spec_for_pipeline(self.pipe).is_video

    @property
    def info(self) -> ModelInfo:
        return model_info(self.pipe, self.call_defaults, self.source)


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
    if not (str(name) == "cpu" or str(name).startswith("cuda")):
        raise ValueError(f"device {name!r} is not one of cpu, cuda, cuda:N, auto")
    return str(name)


def pipe_factors(pipe) -> tuple[int, int]:
    """(spatial, temporal) VAE factors of a pipeline (temporal 1 for image pipelines)."""
    def first(*names, default):
        for name in names:
            value = getattr(pipe, name, None)
            if value:
                return int(value)
        return default

    return (first("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_scale_factor", default=8),
            first("vae_scale_factor_temporal", "vae_temporal_compression_ratio", default=1))


def model_info(pipe, call_defaults: dict | None = None, source: str = "") -> ModelInfo:
    """Describe a loaded pipeline: family, size rules, and defaults (given ones over the pipeline class's own)."""
    spec = spec_for_pipeline(pipe)
    factors = pipe_factors(pipe)
    params = inspect.signature(type(pipe).__call__).parameters
    defaults = {k: params[k].default for k in _CALL_FIELDS if k in params and params[k].default is not None
                and params[k].default is not inspect.Parameter.empty}
    if "height" not in defaults and getattr(pipe, "default_sample_size", None):  # FLUX: computed in __call__
        defaults["height"] = defaults["width"] = pipe.default_sample_size * factors[0]
    defaults.update(call_defaults or {})
    config = pipe.transformer.config
    return ModelInfo(family=spec.family, is_video=spec.is_video,
                     pixel_multiple=int(spec.pixel_multiple(config, factors)),
                     frame_rule=factors[1] if spec.is_video else 0, defaults=defaults, branches=spec.branches,
                     heads=int(config.get("num_attention_heads", 1)), source=source)


def load_pipeline(source: str, device: str | None = "auto", dtype: str | torch.dtype | None = "auto") -> LoadedPipeline:
    """Load `source` (see module docstring) onto `device` in `dtype`."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"model must be a reference string (tiny:<family>, toy:<family>, a folder, a Hub id), got {source!r}")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    ref = resolve_ref(source, "model")
    if ref.kind == "builtin" and source.startswith("tiny:"):
        from ..toy.build import build_pipeline, call_defaults

        family = source.split(":", 1)[1]
        get_spec_by_family(family)  # a clear error for an unknown family
        pipe, defaults = build_pipeline(family, "tiny"), {**call_defaults(family, "tiny"), "num_inference_steps": 20}
    elif ref.kind == "builtin":
        from ..toy import load_toy

        pipe, defaults = load_toy(source.split(":", 1)[1])
        defaults = dict(defaults)
    elif ref.kind == "uri":
        raise ValueError(f"model {source!r}: models are loaded from a local folder or a Hub id, not from a URI; "
                         "copy the folder locally (or to the Hub) first")
    else:
        pipe, defaults = _from_pretrained(ref, torch_dtype)
    spec_for_pipeline(pipe)  # refuses a pipeline lbdist has no spec for, naming the supported ones
    if pipe.transformer.dtype != torch_dtype:
        pipe.to(dtype=torch_dtype)
    pipe.to(device)
    return LoadedPipeline(pipe, spec_for_pipeline(pipe).family, source, defaults)


def _from_pretrained(ref, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    if ref.kind == "local":
        path = Path(ref.value)
        if not (path / "model_index.json").is_file():
            raise ValueError(f"model {ref.text!r}: {path} is not a diffusers pipeline folder (no model_index.json)")
        from .preflight import read_defaults

        defaults = read_defaults(path)  # a broken defaults file is refused before the weights load
        return DiffusionPipeline.from_pretrained(str(path), torch_dtype=torch_dtype), defaults
    ensure_available(ref)
    with hub_errors(ref):
        pipe = DiffusionPipeline.from_pretrained(ref.value, torch_dtype=torch_dtype)
    return pipe, {}
