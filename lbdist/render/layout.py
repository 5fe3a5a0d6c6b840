"""The layout rule: how many actors of which sequence-parallel degree a batch should run on.

    layout = choose_layout(gpus=[8, 8], gpu_memory_gib=80, items=500,
                           model=ModelFootprint(heads=12, tokens=32760, weights_gib=5.7, activations_gib=9.0))
    layout.actors, layout.sp_degree, layout.reason     # 16, 1, "the model fits one GPU ..."

The rule, in order:

1. **Candidates.** SP degrees d in 1, 2, 4, 8 that divide the heads (Ulysses splits heads over ranks), leave every
   rank at least `min_tokens_per_rank` tokens, and fit one node (a group's ranks talk over NVLink: STRICT_PACK).
2. **Memory.** Every rank holds the whole model and 1/d of the activations: `weights + activations / d` must fit
   `gpu_memory * headroom`. The smallest d that fits is the floor; none fitting is an error with the arithmetic.
3. **Latency** (only when `latency_s` is given, with `seconds_per_item` on one GPU): the smallest d whose
   estimated time per item, `seconds_per_item / (d * efficiency(d))`, meets it; if none does, the largest d.
4. **Throughput** (otherwise): the d that finishes the job soonest, `ceil(items / actors(d)) * time(d)` with
   `actors(d) = sum(gpus_on_node // d)`. SP costs efficiency (measured on H100/H200: 1.70x at SP 2 for
   Wan2.1, 2.1x for HunyuanVideo; default 0.85 per rank at 2), so when there are at least as many items as GPUs
   data parallelism wins for large jobs (SP 1: every GPU renders its own items at full efficiency); SP pays
   when items are few for the GPUs (fewer items than GPUs, or a last round that would leave most GPUs idle):
   it puts those GPUs to work on the same items. Ties go to the smaller d.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

DEGREES = (1, 2, 4, 8)
DEFAULT_EFFICIENCY = {1: 1.0, 2: 0.85, 4: 0.8, 8: 0.7}  # speedup(d) = d * efficiency(d)


@dataclass(frozen=True)
class ModelFootprint:
    """What the rule needs to know about a model at the job's size.

    Attributes:
        heads: attention heads (Ulysses degree must divide them).
        tokens: latent tokens of one item (`frames' x h x w / patch`; e.g. 32,760 for Wan2.1 at 480x832x81).
        weights_gib: GPU memory of the weights (and resident adapters) on every rank.
        activations_gib: peak activation memory of one item on one GPU (split over SP ranks).
        seconds_per_item: time of one item on one GPU (for latency targets and the reported estimates).
    """

    heads: int
    tokens: int
    weights_gib: float
    activations_gib: float = 0.0
    seconds_per_item: float = 1.0

    def __post_init__(self):
        for name in ("heads", "tokens"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("weights_gib", "activations_gib"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.seconds_per_item > 0:
            raise ValueError(f"seconds_per_item must be > 0, got {self.seconds_per_item!r}")


@dataclass(frozen=True)
class Layout:
    """The chosen layout: `actors` x `sp_degree` GPUs, the estimates behind it, and why (one sentence)."""

    actors: int
    sp_degree: int
    reason: str
    seconds_per_item: float = 0.0
    makespan_s: float = 0.0
    estimates: Mapping[int, dict] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.actors * self.sp_degree


def _nodes(gpus: int | Sequence[int]) -> list[int]:
    nodes = [gpus] if isinstance(gpus, int) else list(gpus)
    if not nodes or any(type(n) is not int or n < 0 for n in nodes) or sum(nodes) < 1:
        raise ValueError(f"gpus must be a GPU count >= 1 or a list of GPUs per node, got {gpus!r}")
    return nodes


def candidates(model: ModelFootprint, nodes: list[int], min_tokens_per_rank: int) -> list[int]:
    """SP degrees allowed by heads, tokens per rank and node size (step 1)."""
    return [d for d in DEGREES if d <= max(nodes) and model.heads % d == 0
            and (d == 1 or model.tokens // d >= min_tokens_per_rank)]


def memory_floor(model: ModelFootprint, degrees: list[int], gpu_memory_gib: float, headroom: float) -> int:
    """The smallest degree whose ranks fit in memory (step 2); ValueError with the arithmetic if none does."""
    budget = gpu_memory_gib * headroom
    for d in degrees:
        if model.weights_gib + model.activations_gib / d <= budget:
            return d
    largest = degrees[-1]
    raise ValueError(f"the model does not fit: weights {model.weights_gib:.1f} GiB + activations "
                     f"{model.activations_gib:.1f} GiB / SP {largest} = "
                     f"{model.weights_gib + model.activations_gib / largest:.1f} GiB > {budget:.1f} GiB "
                     f"({headroom:.0%} of {gpu_memory_gib:g} GiB); allowed SP degrees here: {degrees}")


def choose_layout(*, gpus: int | Sequence[int], model: ModelFootprint, items: int, gpu_memory_gib: float,
                  latency_s: float | None = None, efficiency: Mapping[int, float] | None = None,
                  min_tokens_per_rank: int = 1024, headroom: float = 0.9) -> Layout:
    """Pick actors x SP degree for `items` items of `model` on a cluster (`gpus`: a count on one node, or GPUs
    per node). See the module docstring for the rule; `efficiency` overrides the SP efficiency table with
    measured values (`speedup / d`)."""
    nodes = _nodes(gpus)
    if type(items) is not int or items < 1:
        raise ValueError(f"items must be an integer >= 1, got {items!r}")
    if latency_s is not None and not latency_s > 0:
        raise ValueError(f"latency_s must be > 0 or None, got {latency_s!r}")
    eff = {**DEFAULT_EFFICIENCY, **dict(efficiency or {})}
    degrees = candidates(model, nodes, min_tokens_per_rank)
    floor = memory_floor(model, degrees, gpu_memory_gib, headroom)
    estimates = {}
    for d in (d for d in degrees if d >= floor):
        actors = sum(n // d for n in nodes)
        if actors:
            per_item = model.seconds_per_item / (d * eff[d])
            estimates[d] = {"actors": actors, "seconds_per_item": per_item,
                            "makespan_s": math.ceil(items / actors) * per_item,
                            "items_per_hour": 3600.0 * actors / per_item}
    if latency_s is not None:
        meeting = [d for d in estimates if estimates[d]["seconds_per_item"] <= latency_s]
        d = min(meeting) if meeting else max(estimates)
        why = (f"SP {d} is the smallest degree meeting {latency_s:g} s per item" if meeting else
               f"no degree meets {latency_s:g} s per item; SP {d} comes closest")
    else:
        d = min(estimates, key=lambda k: (round(estimates[k]["makespan_s"], 9), k))
        why = _throughput_reason(d, floor, items, sum(nodes), model, gpu_memory_gib)
    e = estimates[d]
    return Layout(e["actors"], d, why, e["seconds_per_item"], e["makespan_s"], estimates)


def _throughput_reason(d: int, floor: int, items: int, total_gpus: int, model: ModelFootprint,
                       gpu_memory_gib: float) -> str:
    need = model.weights_gib + model.activations_gib
    if d == floor and floor > 1:
        return (f"memory needs SP {floor}: {need:.1f} GiB of weights and activations do not fit one "
                f"{gpu_memory_gib:g} GiB GPU; more actors of SP {floor} maximise throughput")
    if d == 1:
        return (f"the model fits one GPU ({need:.1f} of {gpu_memory_gib:g} GiB) and {items} items keep "
                f"{min(items, total_gpus)} GPUs busy: data-parallel SP 1 actors give the most items per hour")
    return (f"{items} items on {total_gpus} GPUs: SP {d} finishes the job soonest (data-parallel actors would "
            "leave GPUs idle at the end of the batch; SP puts them to work on the same items)")
