"""Frozen configs of calibration: what to record, and how to train each bridge's adapter."""
from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True)
class RecordConfig:
    """The pre-calibration pass: full-compute sampling of the calibration prompts.

    prompts: 3-5 calibration prompts (never the prompts you evaluate on).
    seeds: one seed per prompt (default 0, 1, 2, ...).
    call_kwargs: pipeline call arguments (height, width, num_frames, guidance_scale, ...); the step count
        comes from the schedule.
    """

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    call_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        prompts = tuple(p.strip() for p in self.prompts)
        if not prompts or any(not p for p in prompts):
            raise ValueError(f"calibration needs at least one non-empty prompt, got {list(self.prompts)!r}")
        seeds = tuple(self.seeds) or tuple(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))


@dataclass(frozen=True)
class TrainConfig:
    """Training of one LoRA per bridge on the final block.

    rank, alpha: LoRA shape (reference r=32, alpha=64).
    lr: AdamW learning rate; None takes the family default (its model spec's `recipe`).
    max_epochs: epochs cap (one epoch = one optimiser step over all training pairs of the bridge);
        None takes the family default (the reference recipe: 5000 for Wan).
    holdout_prompts: the last K prompts' pairs are held out for early stopping (default 0: early stopping
        watches the training loss, as the authors' recipe does; with 3-5 prompts, holding one out for
        model selection generalised worse on our tiny models, see README "Calibrate").
    refit: after early stopping picked the best epoch on held-out pairs, train again from the same start on
        all pairs (held-out ones included) for that many epochs, so no prompt is wasted.
    eval_every: epochs between held-out evaluations.
    patience: evaluations without a relative improvement of `min_delta` before stopping.
    grad_clip: max gradient norm (reference 1.0).
    weight_decay: AdamW weight decay.
    autocast: bf16 autocast on CUDA (the reference); ignored on CPU.
    seed: base seed; each bridge's seed is derived from it and the bridge, so a rerun of one bridge is
        identical to its first run.
    max_seconds: wall-time cap per bridge (None: no cap); training stops at the next evaluation after it.
    """

    rank: int = 32
    alpha: float = 64.0
    lr: float | None = None
    max_epochs: int | None = None
    holdout_prompts: int = 0
    refit: bool = True
    eval_every: int = 25
    patience: int = 4
    min_delta: float = 0.01
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    autocast: bool = True
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self):
        checks = [
            (type(self.rank) is int and self.rank >= 1, f"rank must be an integer >= 1, got {self.rank!r}"),
            (self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}"),
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr!r}"),
            (self.max_epochs is None or (type(self.max_epochs) is int and self.max_epochs >= 1),
             f"max_epochs must be an integer >= 1, got {self.max_epochs!r}"),
            (type(self.holdout_prompts) is int and self.holdout_prompts >= 0,
             f"holdout_prompts must be an integer >= 0, got {self.holdout_prompts!r}"),
            (type(self.eval_every) is int and self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every!r}"),
            (type(self.patience) is int and self.patience >= 1, f"patience must be >= 1, got {self.patience!r}"),
            (self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta!r}"),
            (self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip!r}"),
            (self.max_seconds is None or self.max_seconds > 0, f"max_seconds must be > 0, got {self.max_seconds!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def resolved(self, family: str) -> "TrainConfig":
        """This config with family defaults filled in for lr and max_epochs."""
        from dataclasses import replace

        from ..models import get_spec_by_family

        recipe = get_spec_by_family(family).recipe
        return replace(self, lr=self.lr if self.lr is not None else recipe.lr,
                       max_epochs=self.max_epochs if self.max_epochs is not None else recipe.max_epochs)
