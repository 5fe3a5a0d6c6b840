"""Whether a model and a request can be split over a sequence-parallel degree, with the arithmetic in the error.

Ulysses splits attention heads across ranks, so the head count must be divisible by the Ulysses degree. Every
rank holds an equal slice of the image/video tokens: the token count must be divisible by the whole degree
(xfuser zero-pads otherwise, and the padded tokens join self-attention, which changes the result; its
HunyuanVideo wrapper does not pad at all). These checks are pure functions of the config and the call
arguments, so every rank reaches the same verdict before any collective starts.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping


class DegreeError(ValueError):
    """The model or the requested size cannot be split over this sequence-parallel degree."""


def check_heads(family: str, config: Mapping[str, Any], ulysses: int) -> None:
    heads = int(config["num_attention_heads"])
    if heads % ulysses:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise DegreeError(f"{family}: {heads} attention heads % ulysses({ulysses}) = {heads % ulysses}: Ulysses "
                          f"splits heads across ranks; use a ulysses degree in {divisors} (and put the rest "
                          "of the workers in ring_degree)")


def _call_default(pipe, name: str):
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if param is None else param.default


def call_arg(pipe, call_kwargs: Mapping[str, Any], name: str):
    value = call_kwargs.get(name)
    return _call_default(pipe, name) if value is None else value


def token_count(pipe, family: str, call_kwargs: Mapping[str, Any]) -> int:
    """Image/video tokens the transformer will see for these call arguments (the family spec's arithmetic)."""
    from ..generation.loading import pipe_factors
    from ..models import get_spec_by_family

    spec = get_spec_by_family(family)
    factors = pipe_factors(pipe)
    height, width = call_arg(pipe, call_kwargs, "height"), call_arg(pipe, call_kwargs, "width")
    if height is None or width is None:  # FLUX computes its default size in __call__
        height = width = pipe.default_sample_size * factors[0]
    frames = int(call_arg(pipe, call_kwargs, "num_frames") or 1) if spec.is_video else 1
    return int(spec.latent_tokens(pipe.transformer.config, factors, int(height), int(width), frames))


def check_tokens(family: str, tokens: int, degree: int, what: str = "") -> None:
    if tokens < degree or tokens % degree:
        raise DegreeError(
            f"{family}: {tokens} tokens{' (' + what + ')' if what else ''} cannot be split evenly over "
            f"sequence-parallel degree {degree}: {tokens} % {degree} = {tokens % degree}"
            + (" (fewer tokens than ranks)" if tokens < degree else "")
            + "; change height/width/num_frames so the latent token count is a multiple of the degree, or use "
              "fewer workers")


def check_call(pipe, family: str, call_kwargs: Mapping[str, Any], degree: int) -> int:
    """Raise DegreeError if this call cannot run at `degree`; return the token count."""
    tokens = token_count(pipe, family, call_kwargs)
    shape = {k: call_arg(pipe, call_kwargs, k) for k in ("height", "width", "num_frames") if k in
             inspect.signature(type(pipe).__call__).parameters}
    check_tokens(family, tokens, degree, ", ".join(f"{k}={v}" for k, v in shape.items()))
    return tokens
