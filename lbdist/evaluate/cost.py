"""What a transformer really executed during a generation: calls, FLOPs, and block / attention / FFN runs.

Caches that skip work return early from hooked modules, so a module that was skipped never calls the
layers inside it. `CostMeter` counts exactly those inner calls, which makes skipping visible:

- **FLOPs**: a `TorchDispatchMode` entered around every transformer call counts matmul, convolution and
  attention FLOPs with the formulas of `torch.utils.flop_counter` (the registry `FlopCounterMode` uses),
  plus CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu`, absent from that registry, so
  `FlopCounterMode` would leave attention scores uncounted on the CPU). Elementwise work is not counted.
- **block evaluations**: calls of each block's first norm (`norm1`, or `norm` in single-stream blocks);
  a block whose forward was skipped never reaches it.
- **attention evaluations**: calls of each block attention module's query projection (`to_q`).
- **FFN evaluations**: calls of each feed-forward's input projection (`net.0.proj`; `proj_mlp` in
  single-stream blocks).

    with CostMeter(pipe.transformer) as meter:
        pipe(prompt=...)
    meter.counts   # {"calls": 100, "flops": 1.2e10, "blocks": 800, "attention": 1600, "ffn": 800}
"""
from __future__ import annotations

import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from ..models import get_spec

_aten = torch.ops.aten
_ATTENTION_RE = re.compile(r"(^|\.)to_q$")
_FFN_RE = re.compile(r"(^|\.)(net\.0\.proj|proj_mlp)$")


def _cpu_flash_flops(query, key, value, *args, **kwargs) -> int:
    """`sdpa_flop_count` for the CPU flash kernel (accepts tensors, or shapes as FlopCounterMode passes them)."""
    return sdpa_flop_count(*(tuple(getattr(t, "shape", t)) for t in (query, key, value)))


FLOP_FORMULAS = {**flop_registry, _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops}


class count_flops(TorchDispatchMode):
    """Counts the FLOPs of every op run while active (`.flops`), with `FLOP_FORMULAS`."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _base(module: torch.nn.Module) -> torch.nn.Module:
    """The layer itself under a peft LoRA wrapper (LearniBridge adapters wrap the final block's linears)."""
    get = getattr(module, "get_base_layer", None)
    return get() if get is not None else module


def probe_modules(transformer: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """The modules whose calls `CostMeter` counts, by kind: `blocks` (first norms), `attention`, `ffn`."""
    spec = get_spec(transformer)
    found: dict[str, list[torch.nn.Module]] = {"blocks": [], "attention": [], "ffn": []}
    for block in spec.blocks(transformer):
        norm = getattr(block, "norm1", None) or getattr(block, "norm", None)
        if norm is None:
            raise ValueError(f"{type(block).__name__} has neither `norm1` nor `norm`: CostMeter cannot count its runs")
        found["blocks"].append(norm)
        for name, module in block.named_modules():
            if name.endswith("base_layer"):
                continue
            if _ATTENTION_RE.search(name):
                found["attention"].append(_base(module))
            elif _FFN_RE.search(name):
                found["ffn"].append(_base(module))
    return found


class CostMeter:
    """Context manager counting transformer calls, FLOPs and module evaluations (see the module docstring).

    Args:
        transformer: the pipeline's transformer (with or without caches or the bridge applied).
        flops: count FLOPs too (costs about 2x transformer time on the CPU); module counts are nearly free.
    """

    def __init__(self, transformer: torch.nn.Module, flops: bool = True):
        self.transformer = transformer
        self.flops = flops
        self.counts = {"calls": 0, "flops": 0, "blocks": 0, "attention": 0, "ffn": 0}
        self._handles = []
        self._mode: count_flops | None = None

    def _pre(self, module, args, kwargs):
        self.counts["calls"] += 1
        if self.flops:
            self._mode = count_flops()
            self._mode.__enter__()

    def _post(self, module, args, kwargs, output):
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.counts["flops"] += self._mode.flops
            self._mode = None

    def __enter__(self) -> "CostMeter":
        t = self.transformer
        self._handles = [t.register_forward_pre_hook(self._pre, with_kwargs=True),
                         t.register_forward_hook(self._post, with_kwargs=True, always_call=True)]
        for kind, modules in probe_modules(t).items():
            for module in modules:
                self._handles.append(module.register_forward_hook(
                    lambda m, a, o, kind=kind: self.counts.__setitem__(kind, self.counts[kind] + 1)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False
