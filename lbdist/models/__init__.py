"""The registry of model specs: one `ModelSpec` per transformer family, looked up by transformer class or name.

The built-in families (`wan`, `hunyuan_video`, `flux`) are imported on first use, since each imports its
diffusers classes. `register_spec(spec)` adds another family at run time (a spec is checked for completeness
when it is built); nothing else in lbdist is model-specific. To add a family, see README "Add a model family".
"""
from __future__ import annotations

import importlib

from .spec import BlockArgs, ModelSpec, RealSize, Recipe, ToyGlue, check_complete

_BUILTIN = {"wan": "lbdist.models.wan", "hunyuan_video": "lbdist.models.hunyuan_video",
            "flux": "lbdist.models.flux"}
_registry: dict[str, ModelSpec] = {}


def _load_builtins() -> None:
    for family, module in _BUILTIN.items():
        if family not in _registry:
            _registry[family] = importlib.import_module(module).SPEC


def register_spec(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add a family to the registry (`replace=True` to overwrite one); returns the spec."""
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"register_spec takes a ModelSpec, got {type(spec).__name__}")
    check_complete(spec)
    _load_builtins()
    if spec.family in _registry and not replace:
        raise ValueError(f"a spec for family {spec.family!r} is already registered; pass replace=True to overwrite it")
    _registry[spec.family] = spec
    return spec


def unregister_spec(family: str) -> None:
    """Remove a family added with `register_spec` (built-in families come back on next use)."""
    _registry.pop(family, None)


def specs() -> tuple[ModelSpec, ...]:
    _load_builtins()
    return tuple(_registry.values())


def families() -> tuple[str, ...]:
    return tuple(spec.family for spec in specs())


def supported_classes() -> list[str]:
    return [spec.transformer_class.__name__ for spec in specs()]


def get_spec(transformer) -> ModelSpec:
    """The spec for a transformer instance (or an xfuser wrapper around one, which subclasses it)."""
    for spec in specs():
        if isinstance(transformer, spec.transformer_class):
            return spec
    raise ValueError(
        f"lbdist has no model spec for {type(transformer).__name__}; supported transformer classes: "
        f"{', '.join(supported_classes())}. To add one, write a ModelSpec (see lbdist/models/wan.py) and "
        "register it with lbdist.models.register_spec (README: 'Add a model family').")


def get_spec_by_family(family: str) -> ModelSpec:
    for spec in specs():
        if spec.family == family:
            return spec
    raise ValueError(f"unknown model family {family!r}; known families: {', '.join(families())}")


def spec_for_pipeline(pipe) -> ModelSpec:
    """The spec of a pipeline's transformer (a pipeline without one is refused, naming its class)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ValueError(f"{type(pipe).__name__} has no `transformer`; lbdist supports pipelines of the families "
                         f"{', '.join(families())}")
    return get_spec(transformer)


__all__ = ["BlockArgs", "ModelSpec", "RealSize", "Recipe", "ToyGlue", "families", "get_spec", "get_spec_by_family",
           "register_spec", "spec_for_pipeline", "specs", "supported_classes", "unregister_spec"]
