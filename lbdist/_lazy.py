"""Lazy attributes of a package: heavy submodules (torch, diffusers, peft) load only when a name is used."""
from __future__ import annotations

import importlib


def lazy_attribute(package: str, table: dict[str, str], name: str):
    """Resolve `name` of `package` from `table` (name -> module, relative to the package or absolute)."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, package), name)
