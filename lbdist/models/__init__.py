"""Model specs, one per transformer family, looked up by transformer class.

To support a new family, write a `ModelSpec` in a module beside this one (see `wan.py`) and add it to
`_SPECS`; nothing else in lbdist is model-specific.
"""
from __future__ import annotations

import torch

from .spec import BlockArgs, ModelSpec


def _specs() -> tuple[ModelSpec, ...]:
    from .flux import FLUX
    from .hunyuan_video import HUNYUAN_VIDEO
    from .wan import WAN

    return (WAN, HUNYUAN_VIDEO, FLUX)


def supported_classes() -> list[str]:
    return [spec.transformer_class.__name__ for spec in _specs()]


def get_spec(transformer: torch.nn.Module) -> ModelSpec:
    """The spec for a transformer instance (or an xfuser wrapper around one, which subclasses it)."""
    for spec in _specs():
        if isinstance(transformer, spec.transformer_class):
            return spec
    raise ValueError(
        f"lbdist has no model spec for {type(transformer).__name__}; supported transformer classes: "
        f"{', '.join(supported_classes())}. To add one, write a ModelSpec in lbdist/models/ "
        "(see lbdist/models/wan.py) and list it in lbdist/models/__init__.py."
    )


def get_spec_by_family(family: str) -> ModelSpec:
    for spec in _specs():
        if spec.family == family:
            return spec
    raise ValueError(f"unknown model family {family!r}; known: {[s.family for s in _specs()]}")


__all__ = ["BlockArgs", "ModelSpec", "get_spec", "get_spec_by_family", "supported_classes"]
