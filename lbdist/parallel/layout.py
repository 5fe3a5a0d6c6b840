"""How a group of ranks is split: CFG degree x Ulysses degree x ring degree, and the rule that picks it.

A worker group of `world` ranks runs one pipeline. Three splits compose (`cfg * ulysses * ring == world`):

- **CFG** (`cfg` = 1 or 2): with true classifier-free guidance the pipeline calls the transformer twice per step
  (`cond`, `uncond`). With cfg 2 the ranks form two halves; each half computes only its own branch and the two
  predictions are exchanged once per step (`lbdist.parallel.cfg`). No attention communication at all, so it
  scales almost perfectly; it does nothing for a model that runs one branch.
- **Ulysses** (`ulysses`): inside a half, attention heads are split with all-to-alls; needs the head count
  divisible by it. The faster sequence split inside a node.
- **ring** (`ring`): the rest of the sequence split, passing K/V around a ring; no head constraint.

`choose_group_layout` is the rule the `Generator` uses when the config leaves degrees out:

1. CFG first: `cfg = 2` when the model runs two guidance branches and the group size is even, else 1.
2. Ulysses next: the largest degree that divides both the ranks left (`world / cfg`) and the head count.
3. Ring takes the rest: `ring = world / (cfg * ulysses)`.
4. If the image/video token count at the model's default size is known, it must split evenly over
   `ulysses * ring` (every rank holds an equal slice); otherwise a `DegreeError` prints the arithmetic.

Degrees given explicitly are kept; the rule fills only the others. Plain data, no torch, no Ray.
(`lbdist.render.layout` is the level above: how many groups of how many ranks a batch runs on.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .degree import DegreeError

CFG_DEGREES = (1, 2)


def _positive(name: str, value) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def arithmetic(cfg: int, ulysses: int, ring: int, world: int) -> str:
    """`cfg(2) * ulysses(2) * ring(1) = 4 != world_size(8)` (for error messages)."""
    return f"cfg({cfg}) * ulysses({ulysses}) * ring({ring}) = {cfg * ulysses * ring} != world_size({world})"


@dataclass(frozen=True)
class GroupLayout:
    """One split of a group: `cfg * ulysses * ring` ranks.

    cfg: 1 (both guidance branches on every rank) or 2 (each half of the ranks runs one branch).
    ulysses: Ulysses degree inside each half (head count must be divisible by it).
    ring: ring-attention degree inside each half.
    """

    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    def __post_init__(self):
        for name in ("cfg", "ulysses", "ring"):
            _positive(f"{name}_degree", getattr(self, name))
        if self.cfg not in CFG_DEGREES:
            raise ValueError(f"cfg_degree must be one of {CFG_DEGREES} (two guidance branches at most), "
                             f"got {self.cfg!r}")

    @property
    def world(self) -> int:
        return self.cfg * self.ulysses * self.ring

    @property
    def sp(self) -> int:
        """Sequence-parallel degree of each half (`ulysses * ring`)."""
        return self.ulysses * self.ring

    def check(self, world: int) -> "GroupLayout":
        if self.world != world:
            raise ValueError(f"{arithmetic(self.cfg, self.ulysses, self.ring, world)}: the degrees must multiply to "
                             "the number of ranks")
        return self

    def label(self) -> str:
        return f"cfg{self.cfg}xu{self.ulysses}xr{self.ring}"


@dataclass(frozen=True)
class ModelShape:
    """What the layout rule reads from a model.

    family: model family; branches: guidance branches the pipeline runs per step (2 for true CFG);
    heads: attention heads (None: unknown, Ulysses takes every rank it can); tokens: image/video tokens at the
    model's default size (None: unknown, checked per request instead).
    """

    family: str
    branches: int
    heads: int | None = None
    tokens: int | None = None


def _fill(world: int, cfg: int | None, ulysses: int | None, ring: int | None,
          model: ModelShape | None) -> GroupLayout:
    if cfg is None:
        fixed = (ulysses or 1) * (ring or 1)
        cfg = 2 if model is not None and model.branches == 2 and world % (2 * fixed) == 0 else 1
    if world % cfg:
        raise ValueError(f"world_size({world}) is not divisible by cfg({cfg}); use cfg_degree=1 or an even group")
    rest = world // cfg
    if ulysses is None and ring is None:
        heads = model.heads if model is not None and model.heads else rest
        ulysses = math.gcd(rest, heads)
    if ulysses is None:
        if rest % ring:
            raise ValueError(f"world_size({world}) / cfg({cfg}) = {rest} is not divisible by ring({ring}); pick "
                             f"ring_degree among the divisors of {rest}")
        ulysses = rest // ring
    if ring is None:
        if rest % ulysses:
            raise ValueError(f"world_size({world}) / cfg({cfg}) = {rest} is not divisible by ulysses({ulysses}); "
                             f"pick ulysses_degree among the divisors of {rest}")
        ring = rest // ulysses
    return GroupLayout(cfg, ulysses, ring).check(world)


def choose_group_layout(world: int, model: ModelShape | None = None, *, cfg: int | None = None,
                        ulysses: int | None = None, ring: int | None = None) -> GroupLayout:
    """The layout of a group of `world` ranks for `model` (see the module docstring for the rule).

    Degrees given here are kept and only the others are chosen; `model=None` (unknown) means one branch and
    no head constraint, so the group is all Ulysses, as before CFG-parallel existed.
    """
    _positive("world_size", world)
    for name, value in (("cfg_degree", cfg), ("ulysses_degree", ulysses), ("ring_degree", ring)):
        if value is not None:
            _positive(name, value)
    layout = _fill(world, cfg, ulysses, ring, model)
    if model is not None and model.heads and model.heads % layout.ulysses:
        raise DegreeError(f"{model.family}: {model.heads} attention heads % ulysses({layout.ulysses}) = "
                          f"{model.heads % layout.ulysses}: Ulysses splits heads across ranks; leave ulysses_degree "
                          "out (the layout rule puts the rest in ring) or pick a divisor of the head count")
    if model is not None and model.tokens is not None and model.tokens % layout.sp:
        raise DegreeError(f"{model.family}: {model.tokens} tokens at the default size cannot be split evenly over "
                          f"ulysses({layout.ulysses}) * ring({layout.ring}) = {layout.sp} ranks: {model.tokens} % "
                          f"{layout.sp} = {model.tokens % layout.sp}; use a group size whose sequence split divides it")
    return layout


# --- what a model reference says about itself, read on the driver without loading weights ------------------
def _spec_by_class(name: str):
    from ..models import specs

    return next((s for s in specs() if s.transformer_class.__name__ == name), None)


def describe(model) -> ModelShape | None:
    """`ModelShape` of a model reference (`tiny:` / `toy:` built-ins, a local folder, a Hub id in the local cache;
    read by `lbdist.generation.preflight.transformer_config`, never the network) or of a `PipelineFactory` over
    `load_pipeline(source=...)`; None when it cannot be told without building the model. Tokens are left
    unknown: requests of any size are checked per call against the group's split."""
    from .config import PipelineFactory

    if isinstance(model, PipelineFactory):
        source = model.kwargs.get("source")
        target = model.target if isinstance(model.target, str) else getattr(model.target, "__name__", "")
        return describe(source) if isinstance(source, str) and target.endswith("load_pipeline") else None
    if not isinstance(model, str):
        return None
    if model.startswith("tiny:"):
        from ..models import get_spec_by_family

        spec = get_spec_by_family(model.split(":", 1)[1])
        config = dict(spec.tiny_config)
    else:
        from ..generation.preflight import transformer_config

        config = transformer_config(model) or {}
        spec = _spec_by_class(str(config.get("_class_name", "")))
    if spec is None:
        return None
    heads = config.get("num_attention_heads")
    return ModelShape(spec.family, len(spec.branches), heads if type(heads) is int and heads > 0 else None)
