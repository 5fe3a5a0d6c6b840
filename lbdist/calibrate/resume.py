"""Resuming calibration only with the settings it started with.

A rerun into a directory that already holds work (recorded pairs, trained bridges) continues that work only
if every setting that shapes the result is unchanged. Otherwise it is refused with a `SettingsChanged`
(a ValueError) whose message lists each difference as `name: old -> new` (`lr: 0.001 -> 0.002`), unless the
caller asks to start over (`restart=True`; the CLI's `--restart`), which first clears the earlier work from
that directory (only the files calibration writes there; nothing else in it is touched).

What is compared:
- recorded pairs (`record_pairs`): model class and config digest, schedule, prompts, seeds (and seeds per prompt), validation samples, call arguments;
- trained bridges (`train_adapters`): model, schedule and LoRA shape of the set, and per bridge the settings
  it was trained with (every field of the resolved TrainConfig plus the recording's prompts, seeds and call
  arguments), which the adapter manifest keeps per bridge (`training.<step>_<branch>.settings`). A bridge
  written before settings were recorded shows `(not recorded)` and is refused too: its settings are unknown.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from .config import TrainConfig

RECORDING_KEYS = ("transformer_class", "config_digest", "schedule", "prompts", "seeds", "call_kwargs",
                  "seeds_per_prompt", "validation_prompts", "validation_seeds")
# Recording settings that each trained bridge depends on beyond the model and schedule.
BRIDGE_RECORDING_KEYS = ("prompts", "seeds", "call_kwargs", "seeds_per_prompt", "validation_prompts",
                         "validation_seeds")
_MISSING = object()
_BRIDGE_FILE = re.compile(r"^step\d+_[A-Za-z0-9_]+\.safetensors$")


class SettingsChanged(ValueError):
    """A rerun asked for other settings than the work already in its directory.

    differences: `name: old -> new` lines, one per changed setting.
    """

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = list(differences)


def _normal(value):
    """The value as it reads back from JSON (tuples become lists), so saved and new settings compare equal."""
    return json.loads(json.dumps(value, default=repr))


def format_value(name: str, value) -> str:
    if value is _MISSING:
        return "(not recorded)"
    if name == "schedule" and isinstance(value, dict) and "num_steps" in value:
        return f"{value.get('description') or value.get('full_steps')} over {value['num_steps']} steps"
    text = repr(value) if isinstance(value, (int, float, bool, type(None))) else json.dumps(value, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def settings_differences(old: dict, new: dict, keys=None) -> list[str]:
    """`name: old -> new` for every key (default: all keys of either) whose values differ."""
    keys = keys if keys is not None else sorted({*old, *new}, key=lambda k: (k not in new, str(k)))
    lines = []
    for key in keys:
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a is _MISSING and b is _MISSING:
            continue
        if a is _MISSING or b is _MISSING or _normal(a) != _normal(b):
            lines.append(f"{key}: {format_value(key, a)} -> {format_value(key, b)}")
    return lines


def refusal(what: str, directory, differences: list[str]) -> SettingsChanged:
    """The one error for a changed-settings rerun: the differences, and the two ways forward."""
    return SettingsChanged(
        f"{directory} holds {what} with other settings: {'; '.join(differences)}. Pass restart=True "
        f"(CLI --restart) to start over in {directory}, or use another directory", differences)


def training_settings(config: TrainConfig, pairs_manifest: dict) -> dict:
    """Everything one bridge's training depends on beyond model, schedule and its pairs: the resolved
    training config and the recording's prompts, seeds and call arguments (JSON-normalised)."""
    return _normal({**asdict(config), **{k: pairs_manifest.get(k) for k in BRIDGE_RECORDING_KEYS}})


def clear_adapter_set(directory: str | os.PathLike) -> list[str]:
    """Remove an adapter set's manifest (first, so no manifest outlives its files) and its bridge files from
    `directory`; returns the removed names. Other files in the directory are left alone."""
    from ..bridge.adapter_set import MANIFEST

    directory = Path(directory)
    removed = []
    if (directory / MANIFEST).is_file():
        (directory / MANIFEST).unlink()
        removed.append(MANIFEST)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if _BRIDGE_FILE.match(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink()
                removed.append(path.name)
    return removed


def clear_pairs(directory: str | os.PathLike) -> None:
    """Remove a recording (manifest first, then index and tensor store) from `directory`, nothing else."""
    from .store import INDEX, MANIFEST

    directory = Path(directory)
    for name in (MANIFEST, INDEX):
        if (directory / name).is_file():
            (directory / name).unlink()
    if (directory / "tensors").is_dir():
        shutil.rmtree(directory / "tensors")
