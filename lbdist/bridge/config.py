"""`BridgeConfig`: what `apply_bridge` needs to know, in one frozen, validated object."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

from .adapter_set import AdapterSet
from .schedule import Schedule

AdapterRef = Union[AdapterSet, str, os.PathLike, None]


@dataclass(frozen=True)
class BridgeConfig:
    """How a transformer is bridged.

    Attributes:
        schedule: which steps run in full (`Schedule.periodic(num_steps, N)`, `Schedule.explicit`, or
            `Schedule.parse("periodic:6:w=2", steps)`); every other step is bridged to the latest full step.
            A larger interval N is faster (about N full steps saved per N) and drifts more.
        adapters: the calibrated adapter set: an `AdapterSet`, a directory, an fsspec URI or a Hub repo id
            holding one; None runs the bridge uncalibrated (plain reuse of the cached final-block input), a
            baseline of its own. The set must have been calibrated for this model and schedule.
        adapter_id: the key under which the set stays resident (default: the reference text, or the object's
            identity for an `AdapterSet`). Two requests with the same id reuse the injected adapters.
        allow_uncovered: accept an adapter set that covers only some bridged steps (the others run
            uncalibrated, and the generation summary says which); default False refuses such a set.
        bridge_input: how a bridged step's final-block input is formed (`lbdist.bridge.inputs`): "cached" (the
            paper: the anchor's stream) or "extrapolate" (first order from the last two full steps, one more
            cached stream per branch); None: the adapter set's (its manifest records what it was calibrated
            for), "cached" without one. A set refuses an input it was not calibrated for.
        branches: the guidance branches the run uses (coverage is checked for these); None: the family's
            (`ModelSpec.branches`, e.g. `cond` and `uncond` for Wan with guidance on).
    """

    schedule: Schedule
    adapters: AdapterRef = None
    adapter_id: str | None = None
    allow_uncovered: bool = False
    branches: tuple[str, ...] | None = None
    bridge_input: str | None = None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"BridgeConfig.schedule must be an lbdist Schedule (Schedule.periodic / .explicit / "
                             f".parse), got {type(self.schedule).__name__} {self.schedule!r:.80}")
        if self.adapters is not None and not isinstance(self.adapters, (AdapterSet, str, os.PathLike)):
            raise ValueError(f"BridgeConfig.adapters must be an AdapterSet, a path, a URI, a Hub id or None, "
                             f"got {type(self.adapters).__name__} {self.adapters!r:.80}")
        if isinstance(self.adapters, str) and not self.adapters.strip():
            raise ValueError(f"BridgeConfig.adapters is an empty string ({self.adapters!r}); pass None for the "
                             "uncalibrated bridge")
        if self.adapter_id is not None and (not isinstance(self.adapter_id, str) or not self.adapter_id):
            raise ValueError(f"BridgeConfig.adapter_id must be a non-empty string or None, got {self.adapter_id!r}")
        if self.bridge_input is not None:
            from .inputs import check_mode

            check_mode(self.bridge_input)
        if not isinstance(self.allow_uncovered, bool):
            raise ValueError(f"BridgeConfig.allow_uncovered must be True or False, got {self.allow_uncovered!r}")

    @property
    def key(self) -> str | None:
        """The residency key of the adapter set (None for the uncalibrated bridge)."""
        if self.adapters is None:
            return None
        if self.adapter_id is not None:
            return self.adapter_id
        if isinstance(self.adapters, AdapterSet):
            return f"object:{id(self.adapters)}"
        return os.fspath(self.adapters)
