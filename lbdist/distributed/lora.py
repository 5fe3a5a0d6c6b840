"""One frozen final block shared by a group of bridges, one LoRA per bridge, each sample routed to its own.

    routed = RoutedBlock(block, targets, bridges, rank=32, alpha=64.0, initial=[state_0, state_1, ...])
    routed.route(i)                                   # the next forward uses bridge i's LoRA
    loss = pair_loss(routed.block, spec, pair, cfg)   # the one objective (lbdist.calibrate.objective)
    routed.state(i)                                   # bridge i's peft state dict (the adapter-set format)

Every target linear of the block becomes a `RoutedLinear`: `base(x) + B_i(A_i(x)) * alpha / rank`, exactly
peft's LoRA forward, with `A_i, B_i` views into bridge `i`'s flat weights, selected from all bridges stacked.
Stacking makes every backward produce a gradient (zero outside row `i`) for every bridge's weights in the same
order whatever bridge was routed, so every data-parallel rank runs the same autograd graph: ZeRO-2 reduces
gradients in buckets as they become ready and needs that order to agree across ranks. Each bridge's weights are
one flat parameter (`bridge_parameters(i)`), so an optimiser gives each bridge its own parameter group and the
engine's per-parameter bookkeeping runs once per bridge, not once per LoRA matrix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RoutedLinear(nn.Module):
    """A frozen `nn.Linear` plus the LoRA of whichever bridge its `RoutedBlock` routes to."""

    def __init__(self, base: nn.Linear, owner: "RoutedBlock", target: str):
        super().__init__()
        self.base_layer = base
        self.target = target
        object.__setattr__(self, "_owner", owner)  # not a submodule: the owner holds this one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        out_dtype = result.dtype
        a, b = self._owner.weights(self.target)
        x = x.to(a.dtype)
        result = result + F.linear(F.linear(x, a), b) * self._owner.scaling
        return result.to(out_dtype)


class RoutedBlock(nn.Module):
    """The shared frozen block (`self.block`) and every bridge's LoRA weights, one flat parameter per bridge
    (`self.flat[i]`: each target's A then B, in module order), so an engine handles one tensor per bridge."""

    def __init__(self, block: nn.Module, targets: tuple[str, ...], bridges: list, rank: int, alpha: float,
                 initial: list[dict[str, torch.Tensor]]):
        super().__init__()
        if len(initial) != len(bridges):
            raise ValueError(f"{len(initial)} initial LoRA states for {len(bridges)} bridges: give one per bridge")
        if not bridges:
            raise ValueError("a RoutedBlock needs at least one bridge")
        self.block = block.requires_grad_(False)
        found = _target_linears(block, targets)
        self.targets = tuple(name for name, _ in found)
        self.bridges = list(bridges)
        self.scaling = alpha / rank
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}  # "<target>.lora_A.weight" -> (offset, shape)
        offset = 0
        for name, module in found:
            for part, shape in (("A", (rank, module.in_features)), ("B", (module.out_features, rank))):
                self.layout[f"{name}.lora_{part}.weight"] = (offset, shape)
                offset += shape[0] * shape[1]
        self.numel = offset
        self.flat = nn.ParameterList(nn.Parameter(self._flatten(state)) for state in initial)
        self._selected: torch.Tensor | None = None
        for name, module in found:
            parent_name, _, leaf = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, leaf, RoutedLinear(module, self, name))
        self.route(0)

    def _flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.empty(self.numel, dtype=torch.float32)
        for key, (offset, shape) in self.layout.items():
            flat[offset:offset + shape[0] * shape[1]] = state[key].detach().reshape(-1).to(torch.float32)
        return flat

    def route(self, index: int) -> None:
        """The next forward uses bridge `index`'s LoRA. Selecting from all bridges stacked keeps the autograd graph
        the same whatever the bridge (see the module docstring)."""
        if not 0 <= index < len(self.bridges):
            raise ValueError(f"bridge index {index} out of range 0..{len(self.bridges) - 1}")
        self._selected = torch.stack(list(self.flat))[index]

    def weights(self, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self._view(self._selected, f"{target}.lora_{part}.weight") for part in ("A", "B"))

    def _view(self, flat: torch.Tensor, key: str) -> torch.Tensor:
        offset, shape = self.layout[key]
        return flat[offset:offset + shape[0] * shape[1]].view(shape)

    def bridge_parameters(self, index: int) -> list[nn.Parameter]:
        return [self.flat[index]]

    def state(self, index: int, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Bridge `index`'s LoRA as a peft state dict on the CPU in fp32 (`flat`: its flat weights instead)."""
        flat = (self.flat[index] if flat is None else flat).detach().to("cpu", torch.float32)
        return {key: self._view(flat, key).clone() for key in self.layout}

    def load_state(self, index: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.flat[index].copy_(self._flatten(state).to(self.flat[index].dtype))

    def forward(self, *args, **kwargs):
        return self.block(*args, **kwargs)


def _target_linears(block: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every LoRA target in `block`, in module order; peft's suffix matching of names."""
    found = []
    for name, module in block.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            if not isinstance(module, nn.Linear):
                raise ValueError(f"LoRA target {name!r} of the final block is a {type(module).__name__}, not nn.Linear")
            found.append((name, module))
    if not found:
        raise ValueError(f"none of the LoRA targets {list(targets)} is in the final block")
    return found


def initial_state(block: nn.Module, config, targets: tuple[str, ...], seed: int) -> dict[str, torch.Tensor]:
    """The LoRA a bridge starts from: exactly the single-process trainer's (`lora_copy` with the same seed)."""
    from peft import get_peft_model_state_dict

    from ..calibrate.trainer import lora_copy

    work, _ = lora_copy(block, config, targets, seed)
    state = get_peft_model_state_dict(work, adapter_name="calibrating")
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}
