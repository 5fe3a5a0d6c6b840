"""Frozen configs of calibration: what to record, and how to train each bridge's adapter."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real

MAX_SEED = 2**63 - 1
SEED_STRIDE = 7919  # seed of a prompt's j-th sample: its seed + j * SEED_STRIDE
VALIDATION_SEED = 1_000_000  # default seed of validation prompt i: VALIDATION_SEED + i

RECIPES = ("lbdist", "paper")
OBJECTIVES = ("hidden", "output", "guided")
BRIDGE_INPUTS = ("cached", "extrapolate")
# what each recipe trains: (objective, bridge input); README "Calibration recipe" has the evidence
RECIPE_SETTINGS = {"lbdist": ("guided", "extrapolate"), "paper": ("hidden", "cached")}
# the lbdist recipe's bridge input where it is not "extrapolate": chosen per family by the uncalibrated bridge's
# error on validation prompts (Wan toy, N=5/6/7: cached 0.180/0.205 rel. L2, extrapolated 0.208/0.371)
LBDIST_BRIDGE_INPUT = {"wan": "cached"}


def recipe_settings(recipe: str, family: str | None = None) -> tuple[str, str]:
    """(objective, bridge input) of `recipe` for `family`."""
    objective, bridge_input = RECIPE_SETTINGS[recipe]
    if recipe == "lbdist" and family is not None:
        bridge_input = LBDIST_BRIDGE_INPUT.get(family, bridge_input)
    return objective, bridge_input

@dataclass(frozen=True)
class RecordConfig:
    """The pre-calibration pass: full-compute sampling of the calibration prompts.

    prompts: 3-5 calibration prompts (never the prompts you evaluate on).
    seeds: one (base) seed per prompt (default 0, 1, 2, ...).
    call_kwargs: pipeline call arguments (height, width, num_frames, guidance_scale, ...); the step count
        comes from the schedule.
    seeds_per_prompt: samples per calibration prompt; sample j of prompt i uses seed `seeds[i] + j * 7919`
        (default 1: on the toys 4 seeds per prompt cost 40x the training time for the same validation error).
    validation_prompts: prompts recorded as a separate validation split (same distribution as the
        calibration prompts, never the evaluation prompts); the lbdist recipe early-stops on their error.
    validation_seeds: one seed per validation prompt (default 1_000_000 + i, disjoint from `seeds`).
    """

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    call_kwargs: dict = field(default_factory=dict)
    seeds_per_prompt: int = 1
    validation_prompts: tuple[str, ...] = ()
    validation_seeds: tuple[int, ...] = ()

    def __post_init__(self):
        if isinstance(self.prompts, (str, bytes)) or not isinstance(self.prompts, Iterable):
            raise ValueError(f"prompts must be a sequence of prompt strings (3-5), got {self.prompts!r:.80}")
        raw = tuple(self.prompts)
        bad = [p for p in raw if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must be strings, got {bad[0]!r:.80} ({type(bad[0]).__name__})")
        prompts = tuple(p.strip() for p in raw)
        if not prompts or any(not p for p in prompts):
            raise ValueError(f"calibration needs at least one non-empty prompt, got {list(raw)!r:.200}")
        if isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Iterable):
            raise ValueError(f"seeds must be a sequence of integers (one per prompt), got {self.seeds!r:.80}")
        seeds = tuple(self.seeds) or tuple(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, Integral) or not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds must be integers in 0..{MAX_SEED}, got {bad[0]!r:.80}")
        if not isinstance(self.call_kwargs, Mapping):
            raise ValueError(f"call_kwargs must be a mapping of pipeline call arguments, got {self.call_kwargs!r:.80}")
        if type(self.seeds_per_prompt) is not int or self.seeds_per_prompt < 1:
            raise ValueError(f"seeds_per_prompt must be an integer >= 1, got {self.seeds_per_prompt!r:.80}")
        if isinstance(self.validation_prompts, (str, bytes)) or not isinstance(self.validation_prompts, Iterable):
            raise ValueError(f"validation_prompts must be a sequence of prompt strings, got "
                             f"{self.validation_prompts!r:.80}")
        validation = tuple(self.validation_prompts)
        if any(not isinstance(p, str) or not p.strip() for p in validation):
            raise ValueError(f"validation prompts must be non-empty strings, got {list(validation)!r:.200}")
        validation = tuple(p.strip() for p in validation)
        vseeds = tuple(self.validation_seeds) or tuple(VALIDATION_SEED + i for i in range(len(validation)))
        if len(vseeds) != len(validation):
            raise ValueError(f"{len(vseeds)} validation seeds for {len(validation)} validation prompts: give one "
                             "seed per validation prompt")
        bad = [s for s in vseeds if isinstance(s, bool) or not isinstance(s, Integral) or not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"validation seeds must be integers in 0..{MAX_SEED}, got {bad[0]!r:.80}")
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        object.__setattr__(self, "validation_prompts", validation)
        object.__setattr__(self, "validation_seeds", tuple(int(s) for s in vseeds))

    def samples(self) -> list[tuple[str, int, str]]:
        """Every recorded sample as (prompt, seed, split): calibration prompts x seeds, then validation."""
        train = [(p, s + j * SEED_STRIDE, "train") for p, s in zip(self.prompts, self.seeds)
                 for j in range(self.seeds_per_prompt)]
        return train + [(p, s, "validation") for p, s in zip(self.validation_prompts, self.validation_seeds)]


def _number(value) -> bool:
    """A real number that is not a bool and not NaN (comparisons on anything else would mislead or raise)."""
    return isinstance(value, Real) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class TrainConfig:
    """Training of one LoRA per bridge on the final block.

    recipe: "lbdist" (default) or "paper". "paper" is the reference: the final block's hidden-state MSE on
        the anchor's cached input, early stopping on the training loss (or `holdout_prompts`). "lbdist"
        trains through the model's output head on the guided output `u + g (c - u)` (cond and uncond
        adapters of a step fitted jointly; the plain output for one-branch families), from the first-order
        extrapolated input, or the cached one where the family's validation error chose it
        (`LBDIST_BRIDGE_INPUT`: Wan), and early-stops on the recording's validation samples
        (`RecordConfig.validation_prompts`) when it has them. Chosen by validation error on the toys (README
        "Calibration recipe"). Distributed calibration (`lbdist.distributed`) runs the paper recipe only.
    objective: None (the recipe's), "hidden" (hidden-state MSE, the paper), "output" (MSE of the model output
        through the head, per branch) or "guided" (MSE of the guided output, branches of a step jointly).
    bridge_input: None (the recipe's), "cached" (the anchor's stream, the paper) or "extrapolate" (first order
        from the last two full steps, `lbdist.bridge.inputs`). The adapter set records it and the runtime
        uses the same input.
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

    recipe: str = "lbdist"
    objective: str | None = None
    bridge_input: str | None = None
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
        num = _number
        checks = [
            (self.recipe in RECIPES, f"recipe must be one of {RECIPES}, got {self.recipe!r:.80}"),
            (self.objective is None or self.objective in OBJECTIVES,
             f"objective must be one of {OBJECTIVES} or None (the recipe's), got {self.objective!r:.80}"),
            (self.bridge_input is None or self.bridge_input in BRIDGE_INPUTS,
             f"bridge_input must be one of {BRIDGE_INPUTS} or None (the recipe's), got {self.bridge_input!r:.80}"),
            (type(self.rank) is int and self.rank >= 1, f"rank must be an integer >= 1, got {self.rank!r:.80}"),
            (num(self.alpha) and 0 < self.alpha < float("inf"),
             f"alpha must be > 0, got {self.alpha!r:.80} (a finite number)"),
            (self.lr is None or (num(self.lr) and 0 < self.lr < float("inf")),
             f"lr must be > 0, got {self.lr!r:.80} (a finite number, or None: the family's)"),
            (self.max_epochs is None or (type(self.max_epochs) is int and self.max_epochs >= 1),
             f"max_epochs must be an integer >= 1, got {self.max_epochs!r:.80}"),
            (type(self.holdout_prompts) is int and self.holdout_prompts >= 0,
             f"holdout_prompts must be an integer >= 0, got {self.holdout_prompts!r:.80}"),
            (isinstance(self.refit, bool), f"refit must be True or False, got {self.refit!r:.80}"),
            (type(self.eval_every) is int and self.eval_every >= 1,
             f"eval_every must be an integer >= 1, got {self.eval_every!r:.80}"),
            (type(self.patience) is int and self.patience >= 1,
             f"patience must be an integer >= 1, got {self.patience!r:.80}"),
            (num(self.min_delta) and self.min_delta >= 0,
             f"min_delta must be >= 0, got {self.min_delta!r:.80} (a number)"),
            (num(self.grad_clip) and self.grad_clip > 0,
             f"grad_clip must be > 0, got {self.grad_clip!r:.80} (a number)"),
            (num(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r:.80} (a number)"),
            (isinstance(self.autocast, bool), f"autocast must be True or False, got {self.autocast!r:.80}"),
            (type(self.seed) is int and 0 <= self.seed <= MAX_SEED,
             f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r:.80}"),
            (self.max_seconds is None or (num(self.max_seconds) and self.max_seconds > 0),
             f"max_seconds must be > 0, got {self.max_seconds!r:.80} (a number, or None: no cap)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def resolved(self, family: str) -> "TrainConfig":
        """This config with family defaults filled in for lr and max_epochs, and the recipe's objective and
        bridge input."""
        from dataclasses import replace

        from ..models import get_spec_by_family

        recipe = get_spec_by_family(family).recipe
        objective, bridge_input = recipe_settings(self.recipe, family)
        return replace(self, lr=self.lr if self.lr is not None else recipe.lr,
                       max_epochs=self.max_epochs if self.max_epochs is not None else recipe.max_epochs,
                       objective=self.objective or objective, bridge_input=self.bridge_input or bridge_input)

