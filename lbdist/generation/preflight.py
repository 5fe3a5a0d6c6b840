"""Checks of a model reference before its weights load, so that a run is refused before any work starts.

Loading a real model takes minutes and starting a worker group tens of seconds, so whatever needs the model
but not its weights is checked first:

- `transformer_config(source)`: the transformer's config, read without building anything: `tiny:<family>`
  from the family's spec, `toy:<family>` from the bundled `transformer/config.json`, a local folder's
  `transformer/config.json`, a Hub id's from the local Hub cache (never the network).
- `skeleton(source)`: the pipeline built from its configs on PyTorch's meta device (no weights, no memory;
  well under a second even for 14B models), with the call defaults loading would use; `model_info(source)`
  is its `ModelInfo`, the one the loaded model gives.
- `check_request(source, request)`: the request resolved against that (sizes, frames, output format, the
  schedule against the step count); `check_heads(source, ulysses)`: the head count against the Ulysses
  degree, before any worker starts; `check_tokens(...)`: a resolved request's tokens against the degree.
- `check_device` / `check_dtype`: the names `load_pipeline` accepts; `check_adapters(reference)`: an adapter-set
  reference names something that can be a set (contents are checked when it loads).

What cannot be known this way (a URI, a Hub id that is not in the local cache, a pipeline that cannot be built
on the meta device) is skipped here; the same checks run again once the model is loaded, before any step.
Every refusal is a ValueError naming the value and what is allowed.
"""
from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

from ..refs import Ref, resolve_ref
from .request import GenerationRequest, ModelInfo

DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")  # loading.DTYPES and "auto"
DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]{1,3})?")


def check_device(device) -> None:
    if device is not None and (not isinstance(device, str) or not _DEVICE.fullmatch(device)):
        raise ValueError(f"device {device!r:.80} is not one of {DEVICES}")


def check_dtype(dtype) -> None:
    torch = sys.modules.get("torch")
    if dtype is None or (isinstance(dtype, str) and dtype in DTYPE_NAMES):
        return
    if torch is not None and isinstance(dtype, torch.dtype):
        return
    raise ValueError(f"unknown dtype {dtype!r:.80}; choose one of {sorted(DTYPE_NAMES[1:])} or 'auto'")


def read_defaults(path: str | Path) -> dict:
    """A folder's `lbdist_defaults.json` ({} if it has none); ValueError naming the file if it is not a JSON object."""
    from .loading import DEFAULTS_FILE

    file = Path(path) / DEFAULTS_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{file}: not readable as JSON ({err}); it must hold the model's call arguments, e.g. "
                         '{"height": 480, "width": 832, "num_frames": 81}') from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: must hold a JSON object of call arguments, got {type(data).__name__}")
    return data


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tiny_family(ref: Ref) -> str | None:
    return ref.value.split(":", 1)[1] if ref.kind == "builtin" and ref.value.startswith("tiny:") else None


def _folder(ref: Ref) -> tuple[Path, bool] | None:
    """(pipeline folder, whether loading reads its lbdist_defaults.json), or None if there is none to read."""
    if ref.kind == "builtin" and ref.value.startswith("toy:"):
        from ..toy.bundled import toy_path

        return toy_path(ref.value.split(":", 1)[1]), True
    if ref.kind == "local":
        return Path(ref.value), True
    if ref.kind == "hub":  # only what is already in the local Hub cache; loading reads no defaults file
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(ref.value, "model_index.json")
        except Exception:  # no Hub client, a malformed cache: nothing to read
            return None
        return (Path(found).parent, False) if isinstance(found, str) else None
    return None


def transformer_config(source: str) -> dict | None:
    """The transformer config of a model reference without loading weights (see the module docstring); None
    when it cannot be read that way. A reference that names nothing raises ValueError, as loading would."""
    ref = resolve_ref(source, "model")
    family = _tiny_family(ref)
    if family is not None:
        from ..models import get_spec_by_family

        return dict(get_spec_by_family(family).tiny_config)
    found = _folder(ref)
    return None if found is None else _json(found[0] / "transformer" / "config.json")


def _meta_pipeline(folder: Path):
    """The folder's pipeline with its transformer and VAE built on the meta device, other components None."""
    index = _json(folder / "model_index.json")
    if not index:
        return None
    try:
        import diffusers
        import torch

        pipe_class = getattr(diffusers, str(index.get("_class_name")), None)
        if pipe_class is None:
            return None
        parts = {}
        for name in ("transformer", "vae"):
            library, class_name = index[name]
            cls = getattr(diffusers, class_name, None) if library == "diffusers" else None
            if cls is None:
                return None
            with torch.device("meta"):
                parts[name] = cls.from_config(cls.load_config(folder / name))
        params = inspect.signature(pipe_class.__init__).parameters
        required = {k: None for k, p in params.items() if k != "self" and p.default is p.empty
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return pipe_class(**{**required, **parts})
    except Exception:  # an unusual pipeline: its checks run once it is loaded
        return None


def skeleton(source: str):
    """A `LoadedPipeline` whose transformer and VAE live on the meta device (no weights), or None.

    `tiny:<family>` is built for real (random weights, a fraction of a second). A pipeline class lbdist has no
    spec for is refused here, as loading would refuse it.
    """
    from ..models import spec_for_pipeline
    from .loading import LoadedPipeline, load_pipeline

    ref = resolve_ref(source, "model")
    if _tiny_family(ref) is not None:
        return load_pipeline(source, device="cpu", dtype="float32")
    found = _folder(ref)
    if found is None:
        return None
    folder, own_defaults = found
    defaults = read_defaults(folder) if own_defaults else {}
    pipe = _meta_pipeline(folder)
    if pipe is None:
        return None
    return LoadedPipeline(pipe, spec_for_pipeline(pipe).family, source, defaults)


def model_info(source: str) -> ModelInfo | None:
    """The `ModelInfo` of a model reference before its weights load (None if it cannot be had that way)."""
    loaded = skeleton(source)
    return None if loaded is None else loaded.info


def check_request(source: str, request: GenerationRequest) -> GenerationRequest:
    """`request` resolved against the model `source` before its weights load (ValueError naming the value);
    returned unresolved when the model cannot be described without loading it."""
    info = model_info(source)
    return request if info is None else request.resolve(info)


def check_heads(source, ulysses: int) -> None:
    """Refuse a Ulysses degree that does not divide the model's attention heads, reading only its config."""
    if not isinstance(source, str) or ulysses is None or ulysses <= 1:
        return
    config = transformer_config(source)
    if not config or not isinstance(config.get("num_attention_heads"), int):
        return  # the ranks check it once the model is loaded
    from ..parallel.degree import check_heads as heads_divisible

    heads_divisible(f"model {source!r}", config, ulysses)


def check_adapters(reference) -> None:
    """Refuse an adapter-set reference that cannot name a set: the one reference rule (lbdist.refs), a Hub id
    offline only from the cache, and a local set must be a directory with a manifest. Its contents (names,
    digests, fit, coverage) are checked when it loads, before any step."""
    if reference is None:
        return
    from ..bridge.adapter_files import MANIFEST
    from ..refs import ensure_available

    ref = resolve_ref(reference, "adapters")
    ensure_available(ref)
    if ref.kind == "local":
        path = Path(ref.value)
        if not path.is_dir():
            raise ValueError(f"adapter set {reference!r}: {path} is a file, not an adapter-set directory")
        if not (path / MANIFEST).is_file():
            raise ValueError(f"adapter set {reference!r}: {path} has no {MANIFEST}: not an lbdist adapter set "
                             "(make one with lbdist calibrate)")


def check_tokens(loaded, request: GenerationRequest, info: ModelInfo, degree: int) -> None:
    """Refuse a resolved request whose latent tokens cannot be split evenly over `degree` ranks."""
    if loaded is None or degree <= 1:
        return
    from ..parallel.degree import check_call

    check_call(loaded.pipe, loaded.family, request.call_kwargs(info), degree)
