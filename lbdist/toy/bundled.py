"""The toy models shipped with lbdist: one small trained pipeline per family under `lbdist/toy/weights/`.

    pipe, defaults = load_toy("wan")                 # WanPipeline.from_pretrained(...), offline
    video = pipe(prompt="a red circle moving left on a black background", **defaults).frames[0]

Each bundle is a diffusers pipeline directory written by `tools/train_toy.py` (`save_pretrained`,
safetensors) plus `lbdist_defaults.json`, the call arguments the model was trained for (resolution, frames,
steps, guidance, text length; HunyuanVideo also its prompt template), and `lbdist_eval.json`, its held-out
prompt adherence. Prompts must come from the toy grammar (`lbdist.toy.dataset`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_CLASSES = {"wan": "WanPipeline", "hunyuan_video": "HunyuanVideoPipeline", "flux": "FluxPipeline"}


class Toy(NamedTuple):
    """A loaded toy model: the diffusers pipeline and the call arguments that fit it."""

    pipe: Any
    defaults: dict


def toy_path(family: str) -> Path:
    """Directory of the bundled pipeline of `family` (it may not exist yet)."""
    if family not in PIPELINE_CLASSES:
        raise ValueError(f"family={family!r}: must be one of {tuple(PIPELINE_CLASSES)}")
    return WEIGHTS_DIR / family


def load_defaults(path: str | os.PathLike) -> dict:
    """The call arguments stored beside a toy pipeline's `model_index.json`."""
    return json.loads((Path(path) / "lbdist_defaults.json").read_text())


def load_toy(family: str, device: str = "cpu", path: str | os.PathLike | None = None) -> Toy:
    """Load the bundled (or a given) toy pipeline of `family` with its real diffusers class, offline.

    Raises FileNotFoundError naming the command that trains one when the directory holds no pipeline.
    """
    import diffusers

    path = Path(path) if path is not None else toy_path(family)
    if family not in PIPELINE_CLASSES:
        raise ValueError(f"family={family!r}: must be one of {tuple(PIPELINE_CLASSES)}")
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"no toy pipeline at {path}; train one with: python tools/train_toy.py "
                                f"--family {family} --out {path}")
    pipe = getattr(diffusers, PIPELINE_CLASSES[family]).from_pretrained(path, local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return Toy(pipe, load_defaults(path))
