"""Adapter sets resident on the final block: every adapter injected once, switched in place, sets kept in an LRU.

`ResidentAdapters` injects all adapters of one set with peft into the final block's linear layers (moved to the
block's device and dtype) under names unique to the set; switching a step's adapter on sets the active adapter of
each peft layer (a handful of attribute writes): no file I/O and no host-to-device copy happen during sampling.
At full steps no adapter is active, so each peft layer computes exactly its base layer.

`AdapterCache` keeps several sets resident on one block at once, least recently used first out, bounded by a
count and/or bytes: a server alternating between adapter sets injects each once (`injections` counts them).
"""
from __future__ import annotations

import itertools
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from .adapter_set import AdapterSet


class ResidentAdapters:
    """One adapter set injected into `block`, each bridge's adapter under `<prefix>_s<step>_<branch>`."""

    def __init__(self, block: torch.nn.Module, adapters: AdapterSet, targets: tuple[str, ...], prefix: str = "lb"):
        self.block = block
        self.adapters = adapters
        self.names: dict[tuple[int, str], str] = {}
        param = next(block.parameters())
        config = LoraConfig(r=adapters.lora.rank, lora_alpha=adapters.lora.alpha,
                            target_modules=list(adapters.lora.targets or targets), init_lora_weights=True)
        for (step, branch), state in sorted(adapters.weights.items()):
            name = f"{prefix}_s{step:03d}_{branch}"  # no dots: peft keys modules by it
            with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(config, block, adapter_name=name)
            result = set_peft_model_state_dict(block, state, adapter_name=name)
            unexpected = [k for k in result.unexpected_keys if "lora_" in k]
            if unexpected:
                self.names[(step, branch)] = name
                self.remove()
                raise ValueError(f"adapter for step {step} / {branch} has keys that match no LoRA layer of the "
                                 f"final block: {unexpected[:4]}")
            self.names[(step, branch)] = name
        block.to(device=param.device, dtype=param.dtype)  # new LoRA weights join the block's device and dtype
        block.requires_grad_(False)
        self.layers = [m for m in block.modules() if isinstance(m, BaseTunerLayer)]
        self.nbytes = sum(p.numel() * p.element_size() for n, p in block.named_parameters()
                          if any(f".{name}." in f".{n}." for name in self.names.values()))
        self.deactivate()

    def activate(self, step: int, branch: str) -> bool:
        """Switch on the adapter of (step, branch); False (and none active) if the set has none for it."""
        name = self.names.get((step, branch))
        if name is None:
            self.deactivate()
            return False
        for layer in self.layers:
            layer._active_adapter = [name]  # what BaseTunerLayer.set_adapter sets, minus its requires_grad sweep
        return True

    def deactivate(self) -> None:
        for layer in self.layers:
            layer._active_adapter = []

    def remove(self) -> None:
        """Delete this set's adapters; peft layers left with none are unwrapped back to their base layers."""
        names = set(self.names.values())
        for key, module in list(self.block.named_modules()):
            if not isinstance(module, BaseTunerLayer):
                continue
            for name in names & set(module.lora_A.keys()):
                module.delete_adapter(name)
            if not module.lora_A:
                parent_name, _, child_name = key.rpartition(".")
                parent = self.block.get_submodule(parent_name) if parent_name else self.block
                setattr(parent, child_name, module.get_base_layer())
        self.layers, self.names = [], {}


@dataclass(frozen=True)
class CacheLimits:
    """Bounds of an `AdapterCache`.

    max_sets: most adapter sets resident at once (>= 1). Each set of r=32 adapters on Wan2.1-14B's final
        block for 40 bridged steps and two branches takes about 1 GB of GPU memory in bf16.
    max_bytes: most bytes of LoRA weights resident at once (None: no byte bound). The set in use is never
        evicted, even if it alone exceeds the bound.
    """

    max_sets: int = 4
    max_bytes: int | None = None

    def __post_init__(self):
        if type(self.max_sets) is not int or self.max_sets < 1:
            raise ValueError(f"max_sets must be an integer >= 1, got {self.max_sets!r}")
        if self.max_bytes is not None and (type(self.max_bytes) is not int or self.max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive integer or None, got {self.max_bytes!r}")


class AdapterCache:
    """Adapter sets resident on one final block, by key, least recently used evicted first."""

    def __init__(self, block: torch.nn.Module, targets: tuple[str, ...], limits: CacheLimits = CacheLimits()):
        self.block, self.targets, self.limits = block, targets, limits
        self.sets: OrderedDict[str, ResidentAdapters] = OrderedDict()
        self.injections = 0  # sets injected since creation (a hit does not count)
        self.evictions = 0
        self._prefixes = itertools.count()

    def get(self, key: str, load: Callable[[], AdapterSet]) -> ResidentAdapters:
        """The resident set under `key`, injecting `load()` first if it is not resident."""
        if key in self.sets:
            self.sets.move_to_end(key)
            return self.sets[key]
        resident = ResidentAdapters(self.block, load(), self.targets, prefix=f"lb{next(self._prefixes)}")
        self.sets[key] = resident
        self.injections += 1
        self._evict(keep=key)
        return resident

    def _evict(self, keep: str) -> None:
        def over() -> bool:
            total = sum(r.nbytes for r in self.sets.values())
            return len(self.sets) > self.limits.max_sets or (
                self.limits.max_bytes is not None and total > self.limits.max_bytes)

        while over() and len(self.sets) > 1:
            key = next(k for k in self.sets if k != keep)
            self.sets.pop(key).remove()
            self.evictions += 1

    def clear(self) -> None:
        for resident in self.sets.values():
            resident.remove()
        self.sets.clear()

    def __contains__(self, key: str) -> bool:
        return key in self.sets

    def __len__(self) -> int:
        return len(self.sets)
