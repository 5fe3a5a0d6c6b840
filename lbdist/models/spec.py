"""What lbdist needs to know about one transformer family, and the generic argument plumbing.

A `ModelSpec` says where a diffusers transformer keeps its block lists, which block is the final one,
which block inputs form the *stream* (the states carried from block to block, which the bridge caches)
and in which order a block returns them. Everything else a block receives (timestep modulation, RoPE,
text states for cross-attention, masks) is the step's own *conditioning*, which the model computes as
usual at every step. One spec per family lives beside this file; `get_spec` looks them up by class.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelSpec:
    """Static description of one diffusers transformer family.

    Attributes:
        family: short name used in manifests and CLI output (`"wan"`, `"hunyuan_video"`, `"flux"`).
        transformer_class: the diffusers class this spec describes (matched by `isinstance`).
        block_lists: attribute names of the `nn.ModuleList`s of blocks, in the order `forward` runs them.
        stream_names: block parameters carried from block to block (cached by the bridge).
        output_order: order in which every block returns the stream; a single name means the block
            returns a bare tensor.
        lora_targets: module names inside the final block that receive LoRA adapters.
        pipeline_class: the diffusers pipeline class name that drives this transformer.
        default_branches: guidance branches (`cache_context` names) a pipeline uses by default.
    """

    family: str
    transformer_class: type
    block_lists: tuple[str, ...]
    stream_names: tuple[str, ...]
    output_order: tuple[str, ...]
    lora_targets: tuple[str, ...]
    pipeline_class: str
    default_branches: tuple[str, ...] = ("cond",)

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """All blocks in execution order; the last one is the final block."""
        return [block for name in self.block_lists for block in getattr(transformer, name)]

    def final_block(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return self.blocks(transformer)[-1]

    def final_block_name(self, transformer: torch.nn.Module) -> str:
        last = self.block_lists[-1]
        return f"{last}.{len(getattr(transformer, last)) - 1}"

    def pack_output(self, stream: dict[str, torch.Tensor]) -> Any:
        """Arrange stream tensors the way this family's blocks return them."""
        if len(self.output_order) == 1:
            return stream[self.output_order[0]]
        return tuple(stream[name] for name in self.output_order)

    def unpack_output(self, output: Any) -> dict[str, torch.Tensor]:
        if len(self.output_order) == 1:
            return {self.output_order[0]: output}
        return dict(zip(self.output_order, output))


class BlockArgs:
    """Reads and replaces named arguments of one block class's `forward`, however it was called.

    Built once per block from the signature, so the per-call cost is a dict lookup or a tuple index:
    Wan and HunyuanVideo call their blocks positionally, FLUX by keyword.
    """

    def __init__(self, block: torch.nn.Module):
        forward = type(block).forward
        self.signature = inspect.signature(forward)
        params = list(self.signature.parameters.values())[1:]  # drop self
        self.positions = {
            p.name: i for i, p in enumerate(params)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
        self._bind_self = block

    def get(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        pos = self.positions[name]
        return args[pos] if pos < len(args) else self.signature.parameters[name].default

    def replace(self, values: dict[str, Any], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs = list(args), dict(kwargs)
        for name, value in values.items():
            pos = self.positions[name]
            if name in kwargs or pos >= len(args):
                kwargs[name] = value
            else:
                args[pos] = value
        return tuple(args), kwargs

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Every argument by name (defaults applied; `*args` kept under its own name)."""
        bound = self.signature.bind(self._bind_self, *args, **kwargs)
        bound.apply_defaults()
        out = dict(bound.arguments)
        out.pop("self", None)
        return out

    def call(self, block: torch.nn.Module, arguments: dict[str, Any]) -> Any:
        """Call `block` with arguments as returned by `bind` (possibly with some values replaced)."""
        bound = self.signature.bind_partial(block)
        bound.arguments.update(arguments)
        return block(*bound.args[1:], **bound.kwargs)
