"""The bridge runtime: two removable diffusers hooks, one on the real transformer, one on its final block.

- `StepHook` on the transformer: reads the pipeline's `cache_context` (branch name, step index) and asks
  the schedule what this step is (with no schedule configured, every call runs untouched). At a full step the model runs untouched. At a bridged step the model's
  own `forward` runs with each block list seen as a view holding only the final block (the other lists
  empty), so blocks `0..L-2` are never entered; the real lists are put back before the call returns.
- `FinalBlockHook` on block `L-1`: at a full step stores its stream inputs (one cache per guidance branch)
  and runs the block; at a bridged step runs the block on the cached stream with the current step's own
  conditioning and, if the adapter set has one, the step's LoRA adapter switched on.

Embeddings and the output head are untouched model code, so a bridged step costs them plus one block.
Why views rather than a skip hook on every block (diffusers' FirstBlockCache style): a skip hook costs a
Python call per block at every bridged step (about 5-15 us each; 56 blocks for FLUX), which is several
percent of a bridged FLUX step (about 5 ms on an H100); the view costs the same few microseconds for any
depth.
State lives in a diffusers `StateManager` keyed by the `cache_context` name, and the pipeline resets it
after every call (`maybe_free_model_hooks`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from ..models.spec import BlockArgs, ModelSpec
from . import inputs
from .schedule import Schedule, StepPlan

STEP_HOOK = "lbdist_bridge_step"
FINAL_HOOK = "lbdist_bridge_final"


class BranchState(BaseState):
    """Per guidance branch: the cached final-block stream and the step it was taken at."""

    def __init__(self):
        self.cache: dict[str, torch.Tensor] | None = None
        self.anchor: int | None = None
        self.previous: tuple[int, dict] | None = None  # (full step before the anchor, its stream): inputs.py
        self.calls = 0

    def reset(self):
        self.cache, self.anchor, self.previous, self.calls = None, None, None, 0


@dataclass
class Current:
    plan: StepPlan
    branch: str
    state: BranchState


class BridgeRuntime:
    """Shared by the hooks of one transformer: spec, schedule, resident adapters, counters.

    `configure` switches schedule and adapters between pipeline calls without touching the hooks; with
    `schedule=None` the transformer computes exactly as without the bridge (what a full-compute request uses).
    `adapter_cache` holds the adapter sets resident on the final block (see `resident.AdapterCache`).
    """

    def __init__(self, spec: ModelSpec, schedule: Schedule | None, adapters=None, steps_of=None, adapter_cache=None):
        self.spec = spec
        self.schedule = schedule
        self.adapters = adapters  # ResidentAdapters or None (uncalibrated bridge)
        self.adapter_cache = adapter_cache
        self.steps_of = steps_of  # callable -> the pipeline's step count, for pipelines whose context lacks it
        self.states = StateManager(BranchState)
        self.current: Current | None = None
        self.inputs = "cached"  # how a bridged step's input is formed (bridge/inputs.py)
        self.stats = {"full": 0, "bridged": 0, "calibrated": 0}
        self.trace: list[tuple[int, str, str]] = []  # (step, branch, "full" | "bridged" | "calibrated"); callers clear it

    def configure(self, schedule: Schedule | None, adapters=None, bridge_input: str = "cached") -> None:
        if self.adapters is not None:
            self.adapters.deactivate()
        self.schedule, self.adapters = schedule, adapters
        self.inputs = inputs.check_mode(bridge_input)
        self.states.reset()
        self.current = None
        self.stats = {"full": 0, "bridged": 0, "calibrated": 0}
        self.trace = []

    def begin(self) -> Current:
        context = self.states._context
        if context is None:
            raise RuntimeError(
                "the lbdist bridge needs to know the denoising step: call the transformer inside "
                "`transformer.cache_context('cond', step_index=i)` (diffusers pipelines do this)")
        state: BranchState = self.states.get_state()
        step = context.step_index if context.step_index is not None else state.calls
        total = context.num_inference_steps
        if total is None and state.calls == 0 and self.steps_of is not None:
            total = self.steps_of()
        if total is not None and total != self.schedule.num_steps:
            raise ValueError(
                f"the pipeline runs {total} denoising steps but the bridge schedule has "
                f"{self.schedule.num_steps}; call the pipeline with num_inference_steps="
                f"{self.schedule.num_steps} or enable the bridge with a schedule for {total} steps")
        if step >= self.schedule.num_steps:
            raise ValueError(
                f"transformer call {step} of branch {context.name!r} is past the schedule's "
                f"{self.schedule.num_steps} steps: call the pipeline with num_inference_steps="
                f"{self.schedule.num_steps}, or call lbdist.reset_bridge(pipe) after an interrupted run")
        plan = self.schedule.plan(step)
        if not plan.full and state.anchor != plan.anchor:
            raise RuntimeError(
                f"step {step} ({context.name}) is bridged from step {plan.anchor}, but the cache holds step "
                f"{state.anchor}: the full step was skipped (interrupted run? call lbdist.reset_bridge(pipe))")
        self.stats["full" if plan.full else "bridged"] += 1
        self.trace.append((step, context.name, "full" if plan.full else "bridged"))
        self.current = Current(plan, context.name, state)
        return self.current

    def count_unbridged(self) -> None:
        """A call with no schedule configured: counted as full (step from the pipeline's context, if any)."""
        context = self.states._context
        self.stats["full"] += 1
        if context is not None:
            state: BranchState = self.states.get_state()
            step = context.step_index if context.step_index is not None else state.calls
            state.calls += 1
            self.trace.append((step, context.name, "full"))

    def end(self, current: Current) -> None:
        current.state.calls += 1
        self.current = None

    def cached_bytes(self) -> dict[str, int]:
        """Bytes of the final-block stream held per guidance branch now (what a bridged step reuses)."""
        return {name: sum(t.nbytes for t in state.cache.values())
                for name, state in self.states._state_cache.items() if state.cache}


class StepHook(ModelHook):
    _is_stateful = True

    def __init__(self, runtime: BridgeRuntime):
        super().__init__()
        self.runtime = runtime
        self.state_manager = runtime.states  # found by diffusers' cache_context, which sets its context

    def new_forward(self, module, *args, **kwargs):
        if self.runtime.schedule is None:
            self.runtime.count_unbridged()
            return self.fn_ref.original_forward(*args, **kwargs)
        current = self.runtime.begin()
        try:
            if current.plan.full:
                return self.fn_ref.original_forward(*args, **kwargs)
            saved = self.runtime.spec.only_final_block(module)
            try:
                return self.fn_ref.original_forward(*args, **kwargs)
            finally:
                module._modules.update(saved)
        finally:
            self.runtime.end(current)

    def reset_state(self, module):
        self.state_manager.reset()
        self.runtime.current = None
        return module


class FinalBlockHook(ModelHook):
    _is_stateful = True

    def __init__(self, runtime: BridgeRuntime, block: torch.nn.Module):
        super().__init__()
        self.runtime = runtime
        self.state_manager = runtime.states
        self.args = BlockArgs(block)

    def new_forward(self, module, *args, **kwargs):
        current = self.runtime.current
        if current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        stream = self.runtime.spec.stream_names
        state, plan = current.state, current.plan
        if plan.full:
            inputs.store(state, {n: self.args.get(n, args, kwargs).detach().clone() for n in stream}, plan.step,
                         keep_previous=self.runtime.inputs != "cached")
            return self.fn_ref.original_forward(*args, **kwargs)
        bridged = inputs.form_stream(self.runtime.inputs, plan.step, plan.anchor, state.cache, state.previous)
        args, kwargs = self.args.replace(bridged, args, kwargs)
        adapters = self.runtime.adapters
        if adapters is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if adapters.activate(current.plan.step, current.branch):
            self.runtime.stats["calibrated"] += 1
            self.runtime.trace[-1] = (current.plan.step, current.branch, "calibrated")
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            adapters.deactivate()

    def reset_state(self, module):
        self.state_manager.reset()
        return module
