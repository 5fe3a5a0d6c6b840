"""How a bridged step's final-block input is formed from the streams cached at full steps.

The paper bridges step `b` from the stream cached at its anchor `a`: the final block runs on `x_a`
(mode "cached"). Mode "extrapolate" runs it on a first-order extrapolation from the last two full steps of
the same guidance branch,

    x_b ~ x_a + g (x_a - x_p),   g = (b - a) / (a - p)   (linear in the step index)

where `p` is the full step before `a`. Where no earlier full step exists (the first bridged cycle) it falls
back to `x_a`. Memory: one more cached stream per branch. The bridge runtime (`hooks.FinalBlockHook`) and
calibration (`lbdist.calibrate.objective.pair_stream`) both call `extrapolate`, so a bridged step computes
exactly what its adapter was trained on; an adapter set's manifest records its mode (`extra["bridge_input"]`)
and `apply_bridge` uses it.
"""
from __future__ import annotations

MODES = ("cached", "extrapolate")


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"bridge_input must be one of {MODES}, got {mode!r:.80}")
    return mode


def extrapolate(cache: dict, before: dict, step: int, anchor: int, previous: int) -> dict:
    """`cache` (the stream at `anchor`) moved on to `step` along the line through `before` (at `previous`)."""
    g = (step - anchor) / (anchor - previous)
    return {n: cache[n] + g * (cache[n] - before[n]) for n in cache}


def form_stream(mode: str, step: int, anchor: int, cache: dict, previous: tuple | None) -> dict:
    """The final block's stream at bridged `step`: `cache` is the anchor's stream, `previous` is
    `(p, stream at p)` of the full step before the anchor (None: there is none)."""
    if mode == "cached" or previous is None:
        return cache
    p, before = previous
    return extrapolate(cache, before, step, anchor, p)


def store(state, stream: dict, step: int, keep_previous: bool) -> None:
    """At a full step: keep the stream as the branch's cache, and (if `keep_previous`) the former cache."""
    if keep_previous and state.cache is not None and state.anchor is not None and state.anchor < step:
        state.previous = (state.anchor, state.cache)
    else:
        state.previous = None
    state.cache, state.anchor = stream, step


def of_adapters(adapters) -> str:
    """The bridge input an adapter set was calibrated for (its manifest's `bridge_input`; "cached" if absent)."""
    value = (adapters.extra or {}).get("bridge_input") if adapters is not None else None
    if isinstance(value, dict):
        value = value.get("mode")
    return check_mode(value or "cached")


def resolve(adapters, requested: str | None) -> str:
    """The input of a bridge: the adapter set's, else `requested`, else "cached" (the paper). An adapter set
    calibrated for one input refuses another: the runtime must compute what training computed."""
    if requested is not None:
        check_mode(requested)
    if adapters is None:
        return requested or "cached"
    trained = of_adapters(adapters)
    if requested is not None and requested != trained:
        raise ValueError(f"the adapter set was calibrated with bridge_input {trained!r}; the bridge was asked for "
                         f"{requested!r} (leave bridge_input=None to use the set's)")
    return trained
