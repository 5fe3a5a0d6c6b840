"""Keeps every adapter of a set resident on the final block and switches between them in place.

All adapters are injected once, with peft, into the final block's linear layers and moved to the
block's device and dtype. Switching a step's adapter on sets the active adapter of each peft layer
(a handful of attribute writes): no file I/O and no host-to-device copy happen during sampling.
At full steps no adapter is active, so each peft layer computes exactly its base layer.
"""
from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from .adapter_set import AdapterSet, adapter_name


class ResidentAdapters:
    def __init__(self, block: torch.nn.Module, adapters: AdapterSet, targets: tuple[str, ...]):
        self.block = block
        self.names: dict[tuple[int, str], str] = {}
        param = next(block.parameters())
        config = LoraConfig(r=adapters.lora.rank, lora_alpha=adapters.lora.alpha,
                            target_modules=list(adapters.lora.targets or targets), init_lora_weights=True)
        for (step, branch), state in sorted(adapters.weights.items()):
            name = adapter_name(step, branch)
            with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(config, block, adapter_name=name)
            result = set_peft_model_state_dict(block, state, adapter_name=name)
            unexpected = [k for k in result.unexpected_keys if "lora_" in k]
            if unexpected:
                raise ValueError(f"adapter for step {step} / {branch} has keys that match no LoRA layer of the "
                                 f"final block: {unexpected[:4]}")
            self.names[(step, branch)] = name
        self.layers = [m for m in block.modules() if isinstance(m, BaseTunerLayer)]
        block.to(device=param.device, dtype=param.dtype)  # new LoRA weights join the block's device and dtype
        block.requires_grad_(False)
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
        """Unwrap the peft layers: the block is left exactly as it was before injection."""
        for key, module in list(self.block.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, child_name = key.rpartition(".")
                setattr(self.block.get_submodule(parent_name), child_name, module.get_base_layer())
        self.layers = []
        self.names = {}
