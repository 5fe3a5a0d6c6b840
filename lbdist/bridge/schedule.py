"""Which denoising steps run in full and which are bridged: a pure function of the step index.

Steps are zero-based sampling indices `0..T-1` (not scheduler timesteps). Every step that is not full is
*bridged* from the latest full step before it (its anchor). Step 0 is always full: there is nothing to
bridge from.

    >>> s = Schedule.periodic(num_steps=12, interval=5)
    >>> s.full_steps
    (0, 5, 10)
    >>> s.plan(7)
    StepPlan(step=7, full=False, anchor=5)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_STEPS = 10_000  # a schedule is a tuple per step: far beyond any sampler, small enough to stay instant
FORMS = "'N', 'periodic:N[:w=W][:z=Z]' or 'steps:0,5,10'"
_NUM = r"[0-9]{1,9}"  # ASCII digits only (manifests and logs print them back), at most 9
_INTERVAL = re.compile(_NUM)
_PERIODIC = re.compile(rf"periodic:({_NUM})((?::[wz]={_NUM})*)")
_STEPS = re.compile(rf"steps:({_NUM}(?:,{_NUM})*)")


def check_text(text) -> str:
    """The schedule text stripped of surrounding whitespace, or ValueError naming it and the allowed forms.

    Checks the syntax only (no step count needed), so requests can refuse a malformed schedule on construction.
    """
    if not isinstance(text, str):
        raise ValueError(f"schedule must be a string ({FORMS}), got {type(text).__name__} {text!r:.80}")
    stripped = text.strip()
    if not any(form.fullmatch(stripped) for form in (_INTERVAL, _PERIODIC, _STEPS)):
        raise ValueError(f"cannot parse schedule {text!r:.120}: use {FORMS} (non-negative integers of at most "
                         "9 digits)")
    return stripped


def _check_steps(num_steps) -> None:
    if type(num_steps) is not int or not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps must be an integer in 1..{MAX_STEPS}, got {num_steps!r:.80}")


@dataclass(frozen=True)
class StepPlan:
    """What happens at one step: `full`, or bridged from `anchor` (offset `step - anchor`)."""

    step: int
    full: bool
    anchor: int

    @property
    def offset(self) -> int:
        return self.step - self.anchor


@dataclass(frozen=True)
class Schedule:
    """A set of full steps over `num_steps` denoising steps.

    Build one with `Schedule.periodic` (the paper's `N`) or `Schedule.explicit`; `Schedule.parse` reads
    the CLI form. Fields:
        num_steps: T, the number of denoising steps the schedule (and any adapter set) is made for.
        full_steps: sorted full-compute steps; must contain 0.
        description: how it was built, for manifests and logs (`periodic:5` or `steps:0,3,7`).
    """

    num_steps: int
    full_steps: tuple[int, ...]
    description: str = field(default="", compare=False)
    _anchor: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_steps(self.num_steps)
        if isinstance(self.full_steps, (str, bytes)) or not hasattr(self.full_steps, "__iter__"):
            raise ValueError(f"full_steps must be a sequence of step indices, got {self.full_steps!r:.80}")
        steps = tuple(self.full_steps)
        if not steps:
            raise ValueError("full_steps is empty; it must contain at least step 0")
        bad = [s for s in steps if type(s) is not int or not 0 <= s < self.num_steps]
        if bad:
            raise ValueError(f"full steps {bad} are out of range: valid steps are 0..{self.num_steps - 1}")
        if len(set(steps)) != len(steps):
            raise ValueError(f"full_steps {list(steps)} has duplicates")
        if 0 not in steps:
            raise ValueError(f"step 0 must be full (nothing to bridge from), got full_steps {sorted(steps)}")
        steps = tuple(sorted(steps))
        object.__setattr__(self, "full_steps", steps)
        anchors, last = [], 0
        for step in range(self.num_steps):
            last = step if step in steps else last
            anchors.append(last)
        object.__setattr__(self, "_anchor", tuple(anchors))
        if not self.description:
            object.__setattr__(self, "description", "steps:" + ",".join(map(str, steps)))

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def periodic(cls, num_steps: int, interval: int, warmup: int = 1, cooldown: int = 0) -> "Schedule":
        """Full at every step `s` with `s % interval == 0`, in the first `warmup` and the last `cooldown`.

        `interval` is the paper's N (N=1: every step full). `warmup` >= 1 (step 0 is always full).
        """
        if type(interval) is not int or interval < 1:
            raise ValueError(f"interval N must be an integer >= 1, got {interval!r:.80}")
        _check_steps(num_steps)
        if type(warmup) is not int or not 1 <= warmup <= num_steps:
            raise ValueError(f"warmup must be an integer in 1..{num_steps} (step 0 is always full), got {warmup!r}")
        if type(cooldown) is not int or not 0 <= cooldown <= num_steps:
            raise ValueError(f"cooldown must be an integer in 0..{num_steps}, got {cooldown!r}")
        full = [s for s in range(num_steps) if s % interval == 0 or s < warmup or s >= num_steps - cooldown]
        desc = f"periodic:{interval}" + (f":w={warmup}" if warmup != 1 else "") + (f":z={cooldown}" if cooldown else "")
        return cls(num_steps, tuple(full), desc)

    @classmethod
    def explicit(cls, num_steps: int, full_steps) -> "Schedule":
        return cls(num_steps, tuple(full_steps))

    @classmethod
    def full(cls, num_steps: int) -> "Schedule":
        """Every step full: the bridge changes nothing (used to check exactness)."""
        return cls.periodic(num_steps, 1)

    @classmethod
    def parse(cls, text: str, num_steps: int) -> "Schedule":
        """CLI form: `N` or `periodic:N[:w=W][:z=Z]`, or `steps:0,5,10,...` (explicit full steps).

        Any input either gives a Schedule or raises ValueError naming the text (or the step count) and what
        is allowed.
        """
        text = check_text(text)
        _check_steps(num_steps)
        if _INTERVAL.fullmatch(text):
            return cls.periodic(num_steps, int(text))
        m = _PERIODIC.fullmatch(text)
        if m:
            opts = dict(kv.split("=") for kv in m.group(2).split(":") if kv)
            return cls.periodic(num_steps, int(m.group(1)), int(opts.get("w", 1)), int(opts.get("z", 0)))
        return cls.explicit(num_steps, [int(s) for s in _STEPS.fullmatch(text).group(1).split(",")])

    # --- queries ------------------------------------------------------------------------------------
    def plan(self, step: int) -> StepPlan:
        if type(step) is not int or not 0 <= step < self.num_steps:
            raise ValueError(f"step {step!r} is out of range: this schedule has steps 0..{self.num_steps - 1}")
        anchor = self._anchor[step]
        return StepPlan(step, anchor == step, anchor)

    @property
    def bridged_steps(self) -> tuple[int, ...]:
        return tuple(s for s in range(self.num_steps) if self._anchor[s] != s)

    def bridges(self) -> list[StepPlan]:
        """Every bridged step with its anchor, in step order."""
        return [self.plan(s) for s in self.bridged_steps]

    def to_dict(self) -> dict:
        return {"num_steps": self.num_steps, "full_steps": list(self.full_steps), "description": self.description}

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        return cls(int(data["num_steps"]), tuple(int(s) for s in data["full_steps"]), data.get("description", ""))
