"""CFG-parallel: the two guidance branches of a step run on two halves of the group at once, via one hook.

With true classifier-free guidance a diffusers pipeline calls its transformer twice per step, inside
`transformer.cache_context("cond")` and then `cache_context("uncond")`, and combines the two predictions. With
`apply_cfg_parallel` every rank still runs the unchanged pipeline, but a hook on the transformer lets each rank
compute only the branch its half owns (ranks `0..sp-1` own `cond`, ranks `sp..2sp-1` own `uncond`):

    step i, "cond" call:   cond ranks compute it (and keep it);   uncond ranks return a placeholder at once
    step i, "uncond" call: uncond ranks compute it;   one all-gather between rank r and r + sp exchanges the two
                           predictions; the placeholder is filled with the cond prediction in place, and each
                           rank returns the uncond prediction

so every rank's pipeline sees both predictions and takes the same scheduler step. One all-gather of the
prediction per step is the only communication (Ulysses moves activations four times per attention layer).
Inside each half, xfuser's Ulysses / ring split the tokens as usual (`cfg 2 x ulysses 2` on 4 ranks).

The hook sits outside the bridge's hooks, so a rank's bridge sees only its own branch's calls and keeps only
that branch's cache, exactly as on one device. `apply_cfg_parallel` installs the bridge hooks first (computing in
full until configured) for that reason; removing the bridge afterwards turns CFG-parallel off (correct, slower).

Whether a call runs both branches must be known at its first transformer call: a pipeline with a
`do_classifier_free_guidance` property (Wan, LTX) says so itself; for the others (FLUX, HunyuanVideo: true CFG
is `true_cfg_scale > 1` with a negative prompt) call `prepare_call(pipe, call_kwargs)` first (`Engine` does).
A call that contradicts the expectation (no `uncond` call came) fails loudly instead of returning garbage. The
placeholder is filled before the pipeline combines the predictions, which is how diffusers' pipelines use them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput

HOOK = "lbdist_cfg_parallel"
BRANCHES = ("cond", "uncond")
_ATTR = "_lbdist_cfg"


@dataclass(frozen=True)
class CFGParallelConfig:
    """CFG-parallel on this process.

    degree: ranks sharing one step's two branches: 2 (the only split of two branches); 1 turns it off.
    sp: ranks of each half (its Ulysses x ring degree); the world size must be `degree * sp`. Rank r's partner
        is `r + sp` (or `r - sp`): ranks `0..sp-1` run `cond`, the others `uncond`.
    """

    degree: int = 2
    sp: int = 1

    def __post_init__(self):
        if self.degree not in (1, 2):
            raise ValueError(f"CFG degree must be 1 or 2 (two guidance branches), got {self.degree!r}")
        if type(self.sp) is not int or self.sp < 1:
            raise ValueError(f"sp must be an integer >= 1, got {self.sp!r}")


class _Unused(BaseState):
    def reset(self):
        pass


def guided(pipe, call_kwargs) -> bool:
    """Whether `pipe(**call_kwargs)` runs both guidance branches (diffusers' own conditions)."""
    params = inspect.signature(type(pipe).__call__).parameters

    def arg(name):
        value = call_kwargs.get(name)
        return params[name].default if value is None and name in params else value

    if "true_cfg_scale" in params:  # FLUX, HunyuanVideo: true CFG needs a scale > 1 and a negative prompt
        negative = any(call_kwargs.get(k) is not None for k in ("negative_prompt", "negative_prompt_embeds"))
        return float(arg("true_cfg_scale") or 1.0) > 1.0 and negative
    if isinstance(getattr(type(pipe), "do_classifier_free_guidance", None), property):  # Wan, LTX
        return float(arg("guidance_scale") or 0.0) > 1.0
    return False


def _tensor(output):
    return output[0] if isinstance(output, tuple) else output.sample


def _packed(tensor, kwargs):
    return (tensor,) if kwargs.get("return_dict", True) is False else Transformer2DModelOutput(sample=tensor)


class CFGRuntime:
    """This rank's side of CFG-parallel: its branch, its pair group, the prediction waiting for the exchange."""

    def __init__(self, pipe, config: CFGParallelConfig, group):
        rank = torch.distributed.get_rank()
        self.pipe, self.config, self.group = pipe, config, group
        self.branch = BRANCHES[rank // config.sp]
        self.expected: bool | None = None   # set by prepare_call for the next pipeline call; None: ask the pipe
        self.active: bool | None = None     # decided at the first call of a pipeline call
        self.ran_parallel = False           # whether the last pipeline call ran CFG-parallel (for merge_calls)
        self.kept = None                    # cond ranks: the cond prediction of this step, until the exchange
        self.placeholder = None             # uncond ranks: the tensor handed out for cond, filled at the exchange
        self.error: str | None = None
        self.skipped = 0                    # transformer calls this rank did not compute (its partner did)

    def decide(self) -> bool:
        if self.active is None:
            if isinstance(getattr(type(self.pipe), "do_classifier_free_guidance", None), property):
                self.active = bool(self.pipe.do_classifier_free_guidance)
            elif self.expected is not None:
                self.active = self.expected
            else:
                raise RuntimeError(f"CFG-parallel cannot tell whether this {type(self.pipe).__name__} call runs both "
                                   "guidance branches: call lbdist.parallel.cfg.prepare_call(pipe, call_kwargs) "
                                   "before pipe(...) (lbdist's Engine does)")
            self.ran_parallel = self.active
        return self.active

    def exchange(self, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) predictions from this rank's own one and its partner's (one all-gather)."""
        mine = mine.contiguous()
        both = [torch.empty_like(mine) for _ in range(self.config.degree)]
        torch.distributed.all_gather(both, mine, group=self.group)
        return both[0], both[1]

    def finish_call(self) -> None:
        """End of a pipeline call (the pipeline resets its hooks): a prediction still waiting is an error."""
        if self.kept is not None or self.placeholder is not None:
            self.error = ("CFG-parallel expected an 'uncond' transformer call after the last 'cond' one, but the "
                          "pipeline call ended without it (guidance was off?): its output is wrong")
        self.kept = self.placeholder = None
        self.expected = self.active = None

    def check(self) -> None:
        """Raise if the last pipeline call broke CFG-parallel's expectations (the worker calls it after each run)."""
        error, self.error = self.error, None
        if error:
            raise RuntimeError(error)


class CFGParallelHook(ModelHook):
    """On the transformer, outside every other hook: compute only this rank's branch, exchange once a step."""

    _is_stateful = True

    def __init__(self, runtime: CFGRuntime):
        super().__init__()
        self.runtime = runtime
        self.state_manager = StateManager(_Unused)  # receives the pipeline's cache_context (branch name)

    def new_forward(self, module, *args, **kwargs):
        context = self.state_manager._context
        name = None if context is None else context.name
        rt = self.runtime
        if name not in BRANCHES or not rt.decide():
            return self.fn_ref.original_forward(*args, **kwargs)
        if name == "cond":
            if rt.kept is not None or rt.placeholder is not None:
                raise RuntimeError("CFG-parallel: two 'cond' calls without an 'uncond' call between them; this "
                                   "pipeline call does not run both guidance branches every step")
            if rt.branch == "cond":
                output = self.fn_ref.original_forward(*args, **kwargs)
                rt.kept = _tensor(output)
                return output
            rt.skipped += 1
            rt.placeholder = torch.empty(0, device=_device(module), dtype=_dtype(module))
            return _packed(rt.placeholder, kwargs)
        return self._uncond(*args, **kwargs)

    def _uncond(self, *args, **kwargs):
        rt = self.runtime
        if rt.branch == "uncond":
            if rt.placeholder is None:
                raise RuntimeError("CFG-parallel: an 'uncond' call came before this step's 'cond' call; the "
                                   "pipeline must run cond first")
            output = self.fn_ref.original_forward(*args, **kwargs)
            cond, _ = rt.exchange(_tensor(output))
            rt.placeholder.resize_(cond.shape).copy_(cond)
            rt.placeholder = None
            return output
        if rt.kept is None:
            raise RuntimeError("CFG-parallel: an 'uncond' call came before this step's 'cond' call; the pipeline "
                               "must run cond first")
        rt.skipped += 1
        _, uncond = rt.exchange(rt.kept)
        rt.kept = None
        return _packed(uncond, kwargs)

    def reset_state(self, module):
        self.runtime.finish_call()
        return module


def _device(module) -> torch.device:
    return next(module.parameters()).device


def _dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype


def pair_groups(config: CFGParallelConfig):
    """This rank's pair group `{r, r + sp}`. Collective: every rank of the world must call it, in the same order."""
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if world != config.degree * config.sp:
        raise ValueError(f"cfg({config.degree}) * sp({config.sp}) = {config.degree * config.sp} != "
                         f"world_size({world})")
    mine = None
    for r in range(config.sp):
        group = torch.distributed.new_group([r + k * config.sp for k in range(config.degree)])
        if rank % config.sp == r:
            mine = group
    return mine


def apply_cfg_parallel(pipe, *, config: CFGParallelConfig, group=None) -> CFGRuntime | None:
    """Put CFG-parallel on `pipe.transformer` (after SP wrapping and after the bridge; see module docstring).

    `group`: this rank's pair group (default: built with `pair_groups`, a collective). Returns the runtime
    (None for degree 1). Every rank must call it.
    """
    from ..bridge import apply_bridge, get_bridge

    if not isinstance(config, CFGParallelConfig):
        raise ValueError(f"config must be a CFGParallelConfig, got {type(config).__name__}")
    if config.degree == 1:
        return None
    if not torch.distributed.is_initialized():
        raise RuntimeError("CFG-parallel needs torch.distributed: join the group first (apply_sequence_parallel, "
                           "or a WorkerGroup)")
    group = group if group is not None else pair_groups(config)
    transformer = pipe.transformer
    if get_bridge(pipe) is None:
        apply_bridge(pipe, config=None)  # bridge hooks first, so this hook wraps them
    runtime = CFGRuntime(pipe, config, group)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if HOOK in registry.hooks:
        registry.remove_hook(HOOK, recurse=False)
    registry.register_hook(CFGParallelHook(runtime), HOOK)
    setattr(transformer, _ATTR, runtime)
    return runtime


def get_cfg(pipe) -> CFGRuntime | None:
    return getattr(getattr(pipe, "transformer", None), _ATTR, None)


def prepare_call(pipe, call_kwargs) -> None:
    """Tell CFG-parallel (if on) whether the next `pipe(**call_kwargs)` runs both branches; no-op otherwise."""
    runtime = get_cfg(pipe)
    if runtime is not None:
        runtime.expected, runtime.active, runtime.ran_parallel = guided(pipe, call_kwargs), None, False


def after_call(pipe, calls: dict) -> dict:
    """After a pipeline call: raise if it broke CFG-parallel's expectations; return the transformer-call counts
    summed over the pair when it ran CFG-parallel (a collective on every rank), so a result counts both branches
    as on one device."""
    runtime = get_cfg(pipe)
    if runtime is None:
        return dict(calls)
    runtime.check()
    if not runtime.ran_parallel:
        return dict(calls)
    keys = sorted(calls)
    counts = torch.tensor([float(calls[k]) for k in keys], dtype=torch.float64)
    if torch.distributed.get_backend(runtime.group) == "nccl":
        counts = counts.cuda()
    torch.distributed.all_reduce(counts, group=runtime.group)
    return {k: int(v) for k, v in zip(keys, counts.tolist())}
