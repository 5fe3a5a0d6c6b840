"""The frozen final block a training worker needs, loaded without the rest of the model where possible.

Training sees only the final block (and the recorded pairs), so a worker of a 14B model should not hold 14B
weights. For a diffusers folder (local, a Hub snapshot, or a `toy:` model) the transformer is built on the meta
device from its config, and only the final block's tensors are read from its safetensors files (sharded or not);
`tiny:` models (random weights built in code) are built whole and the block is taken from them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _folder(model: str) -> Path | None:
    """The local diffusers folder of a model reference (None for `tiny:`)."""
    from ..refs import fetch_hub, resolve_ref

    if model.startswith("tiny:"):
        return None
    if model.startswith("toy:"):
        from ..toy import toy_path

        return toy_path(model.split(":", 1)[1])
    ref = resolve_ref(model, "model")
    if ref.kind == "hub":
        return fetch_hub(ref, allow_patterns=["model_index.json", "transformer/*"])
    if ref.kind != "local":
        raise ValueError(f"model {model!r}: load models from a local folder or a Hub id")
    return Path(ref.value)


def _class_of(folder: Path):
    import diffusers

    config = json.loads((folder / "transformer" / "config.json").read_text())
    return getattr(diffusers, config["_class_name"]), config


def _tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    sub = folder / "transformer"
    if (sub / WEIGHTS_INDEX).is_file():
        weight_map = json.loads((sub / WEIGHTS_INDEX).read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
    else:
        files = [WEIGHTS]
    out = {}
    for name in files:
        with safe_open(str(sub / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = f.get_tensor(key)
    return out


def load_final_block(model: str, device: str | torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, object]:
    """(final block on `device` in `dtype`, frozen, its family's spec) of the model reference `model`."""
    from ..models import get_spec

    folder = _folder(model)
    if folder is None or not (folder / "transformer" / "config.json").is_file():
        from ..generation.loading import load_pipeline

        pipe = load_pipeline(model, device="cpu", dtype=dtype).pipe
        spec = get_spec(pipe.transformer)
        block = spec.final_block(pipe.transformer)
        return block.to(device).requires_grad_(False).eval(), spec
    from accelerate import init_empty_weights

    cls, config = _class_of(folder)
    with init_empty_weights(include_buffers=True):
        transformer = cls.from_config(config)
    spec = get_spec(transformer)
    name = spec.final_block_name(transformer)
    block = transformer.get_submodule(name)
    state = _tensors(folder, name + ".")
    block.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    if any(b.is_meta for b in block.buffers()):
        raise ValueError(f"model {model!r}: the final block has buffers that are not in its weights files")
    return block.to(device).requires_grad_(False).eval(), spec
