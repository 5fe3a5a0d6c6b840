"""Compiled blocks: `torch.compile` of each repeated transformer block's own forward, beneath lbdist's hooks.

    compile_blocks(pipe.transformer, config=CompileConfig())   # before apply_bridge / CFG-parallel hooks
    with CompileCounter() as counter:
        pipe(...)                                              # counter.count: dynamo compilations seen

Regional compilation as in diffusers' `compile_repeated_blocks`: every block of a list shares one class, so
dynamo compiles its forward once and reuses the graph for every block (a 40-block model compiles in the time of
one block). The difference is *what* is compiled. diffusers compiles each block's `__call__`, which runs any
hook attached to it; the bridge's final-block hook reads per-step Python state (the step, the cache, full or
bridged), so dynamo would specialise on it and recompile at every step. Here each block's bound `forward` is
compiled and put in its place *before* the bridge and CFG-parallel hooks are attached, so the hooks wrap the
compiled forward and run eagerly around it: bridged and full steps call the same graph with tensors of the
same shapes, and nothing recompiles across steps or across bridged/full switches.

LoRA adapters that peft injects later (the bridge's resident adapters on the final block) switch by Python
state, one adapter name per bridged step. A forward pre-hook on the final block marks each peft layer it finds
`torch.compiler.disable`d, so the adapter choice is never traced: the final block recompiles once when a set is
first injected (its module tree changed) and never per step; its LoRA layers run eagerly between compiled
pieces. Under xfuser's sequence-parallel wrappers the blocks' attention processors do the all-to-alls inside the
compiled forward (dynamo traces or graph-breaks around them; the result is the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_MARK = "_lbdist_compiled"
_EAGER = "_lbdist_eager_lora"
BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")


@dataclass(frozen=True)
class CompileConfig:
    """How the blocks are compiled (arguments of `torch.compile`).

    backend: "inductor" (default: fused kernels; what the GPU benchmark measures), "aot_eager" (traces and
        guards exactly as inductor does but runs eager kernels: tests, quick CPU checks), "eager", "cudagraphs".
    mode: inductor mode: None (default), "max-autotune-no-cudagraphs" (longer compile, often faster), ...
        "reduce-overhead" / "max-autotune" use CUDA graphs, which the eager hooks between blocks defeat.
    fullgraph: require one graph per block (fails on a graph break instead of splitting); off by default since
        the SP wrappers' collectives and the eager LoRA layers break graphs.
    dynamic: dynamo's dynamic-shape setting: None (static first, dynamic after a second shape), True, False.
    """

    backend: str = "inductor"
    mode: str | None = None
    fullgraph: bool = False
    dynamic: bool | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"compile backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.mode is not None and not isinstance(self.mode, str):
            raise ValueError(f"compile mode must be a string or None, got {self.mode!r}")
        if self.mode is not None and self.backend != "inductor":
            raise ValueError(f"compile mode {self.mode!r} is an inductor option; backend is {self.backend!r}")

    def kwargs(self) -> dict:
        out = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.mode is not None:
            out["mode"] = self.mode
        return out


def _eager_lora(block, _args) -> None:
    """Forward pre-hook: peft layers found in `block` run outside the compiled graph (see module docstring)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no adapters to hide
        return
    for module in block.modules():
        if isinstance(module, BaseTunerLayer) and not getattr(module, _EAGER, False):
            module.forward = torch.compiler.disable(module.forward)
            setattr(module, _EAGER, True)


def compile_blocks(transformer: torch.nn.Module, *, config: CompileConfig | None = None) -> int:
    """Compile every block of `transformer` (its family's `block_lists`) in place; returns how many.

    Call before any diffusers hook is attached to a block (the bridge, CFG-parallel): `Engine(compile=...)` and
    `GeneratorConfig(compile=...)` do it in that order. Compiling twice is a no-op.
    """
    from ..models import get_spec

    config = config or CompileConfig()
    if not isinstance(config, CompileConfig):
        raise ValueError(f"config must be a CompileConfig, got {type(config).__name__}")
    spec = get_spec(transformer)
    blocks = spec.blocks(transformer)
    hooked = [i for i, b in enumerate(blocks) if getattr(b, "_diffusers_hook", None) is not None
              and b._diffusers_hook.hooks]
    if hooked:
        raise ValueError(f"blocks {hooked[:4]} already carry diffusers hooks (the bridge?): compile the blocks first, "
                         "then apply the bridge, so the hooks run eagerly around the compiled forward")
    done = 0
    for block in blocks:
        if getattr(block, _MARK, False):
            continue
        block.forward = torch.compile(block.forward, **config.kwargs())
        setattr(block, _MARK, True)
        done += 1
    final = blocks[-1]
    if done and not getattr(final, "_lbdist_lora_prehook", None):
        final._lbdist_lora_prehook = final.register_forward_pre_hook(_eager_lora)
    return done


def is_compiled(transformer: torch.nn.Module) -> bool:
    from ..models import get_spec

    return any(getattr(b, _MARK, False) for b in get_spec(transformer).blocks(transformer))


def uncompile_blocks(transformer: torch.nn.Module) -> None:
    """Give every block its eager forward back (call before attaching hooks again, or to compare)."""
    from ..models import get_spec

    blocks = get_spec(transformer).blocks(transformer)
    if any(getattr(b, "_diffusers_hook", None) is not None and b._diffusers_hook.hooks for b in blocks):
        raise ValueError("remove the bridge (remove_bridge) before uncompiling: its hooks hold the compiled forward")
    for block in blocks:
        if getattr(block, _MARK, False):
            del block.forward
            delattr(block, _MARK)
    handle = getattr(blocks[-1], "_lbdist_lora_prehook", None)
    if handle is not None:
        handle.remove()
        del blocks[-1]._lbdist_lora_prehook


class CompileCounter:
    """Counts dynamo compilations (first compiles and recompiles) while active, with a caller-set label.

        with CompileCounter() as counter:
            ... counter.label = step ...
        counter.count, counter.by_label  # e.g. {0: 1, 3: 2}: compiled at steps 0 and 3 only
    """

    def __init__(self):
        self.count = 0
        self.by_label: dict = {}
        self.label = None
        self._callback = None

    def _on_start(self, args) -> None:
        from torch._dynamo.callback import CallbackTrigger

        if getattr(args, "callback_trigger", CallbackTrigger.DYNAMO) != CallbackTrigger.DYNAMO:
            return
        self.count += 1
        self.by_label[self.label] = self.by_label.get(self.label, 0) + 1

    def __enter__(self) -> "CompileCounter":
        from torch._dynamo.callback import callback_handler

        self._callback = callback_handler.register_start_callback(self._on_start)
        return self

    def __exit__(self, *exc) -> None:
        from torch._dynamo.callback import callback_handler

        callback_handler.remove_start_callback(self._callback)
