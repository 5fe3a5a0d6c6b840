"""An adapter set: one LoRA per bridge (bridged step x guidance branch) for one model and schedule.

On disk it is a directory holding `lbdist_adapters.json` (the manifest) and one safetensors file per
bridge, `step{b:03d}_{branch}.safetensors`, whose keys are peft state-dict keys relative to the final
block (`attn.to_q.lora_A.weight`, ...). Nothing is ever unpickled. The calibration step produces sets;
`enable_bridge(pipe, schedule, adapters=...)` consumes them.

Format 2 (written now) records the sha256 digest of every tensor file; loading checks it. Format 1 sets
(no digests) still load, with an `UncheckedAdapterSetWarning`. Whatever the format, a manifest may only
name plain file names inside the set (see adapter_files.py), and every broken set fails with a ValueError
naming the file and the problem. A set is found by `lbdist.refs.resolve_ref(..., "adapters")`: a local
directory, an fsspec URI, or a Hub id `owner/name` (never a path that merely looks like one).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from ..io import atomic_write
from .adapter_files import (MANIFEST, FsspecSource, LocalSource, check_bridges, check_header, parse_tensors,
                            read_manifest, sha256_hex)
from .schedule import Schedule

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_KNOWN = ("format_version", "family", "transformer_class", "config_digest", "schedule", "branches", "lora",
          "bridges")


class UncheckedAdapterSetWarning(UserWarning):
    """A format-1 adapter set was loaded: its manifest has no digests, so file contents were not checked."""


@dataclass(frozen=True)
class LoraSettings:
    """Shape of every adapter in a set.

    rank: LoRA rank r (reference 32). Higher fits better but costs more at bridged steps.
    alpha: LoRA scale numerator (reference 64; the update is scaled by alpha / rank).
    targets: module names inside the final block that carry adapters (default: the family's spec).
    """

    rank: int = 32
    alpha: float = 64.0
    targets: tuple[str, ...] = ()

    def __post_init__(self):
        if type(self.rank) is not int or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        object.__setattr__(self, "targets", tuple(self.targets))


def config_digest(transformer: torch.nn.Module) -> str:
    """A short digest of a transformer's config: adapters only fit the architecture they were trained on."""
    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def adapter_name(step: int, branch: str) -> str:
    """peft adapter name of one bridge (no dots: peft keys modules by it)."""
    return f"lb_s{step:03d}_{branch}"


def _file_name(step: int, branch: str) -> str:
    if not (isinstance(branch, str) and branch and branch.replace("_", "").isalnum() and branch.isascii()):
        raise ValueError(f"branch name {branch!r} cannot name a file: use letters, digits and _")
    return f"step{step:03d}_{branch}.safetensors"


def describe_steps(steps) -> str:
    """`[1, 2, 3, 5, 7, 8]` -> `1-3, 5, 7-8`."""
    runs: list[list[int]] = []
    for s in sorted(steps):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def describe_bridges(bridges) -> str:
    """`[(3, 'cond'), (4, 'cond'), (9, 'uncond')]` -> `steps 3-4 (cond); steps 9 (uncond)`."""
    by_branch: dict[str, list[int]] = {}
    for step, branch in bridges:
        by_branch.setdefault(branch, []).append(step)
    return "; ".join(f"steps {describe_steps(steps)} ({branch})" for branch, steps in sorted(by_branch.items()))


@dataclass
class AdapterSet:
    """Every bridge's LoRA weights (CPU tensors) plus what they were made for.

    Attributes:
        family, transformer_class, config_digest: the model the set fits.
        schedule: the schedule whose bridged steps the adapters correct.
        branches: guidance branches with adapters (`cond`, and `uncond` for true-CFG pipelines).
        lora: rank, alpha and target modules.
        weights: `(step, branch) -> peft state dict` of the final block.
        extra: free-form manifest fields (training losses, versions, prompts, ...).
        digests: `(step, branch) -> sha256` of the bridge's file as last loaded or saved (filled by
            `load`/`save`; a bridge without one is digested from its weights when the manifest is written).
    """

    family: str
    transformer_class: str
    config_digest: str
    schedule: Schedule
    branches: tuple[str, ...]
    lora: LoraSettings
    weights: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    digests: dict[tuple[int, str], str] = field(default_factory=dict, repr=False, compare=False)

    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "transformer_class": self.transformer_class,
            "config_digest": self.config_digest,
            "schedule": self.schedule.to_dict(),
            "branches": list(self.branches),
            "lora": {**asdict(self.lora), "targets": list(self.lora.targets)},
            "bridges": [{"step": s, "branch": b, "file": _file_name(s, b), "sha256": self._digest((s, b))}
                        for (s, b) in sorted(self.weights)],
            **{k: v for k, v in self.extra.items() if k not in _KNOWN},  # never overriding the fields above
        }

    def _digest(self, key: tuple[int, str]) -> str:
        if key not in self.digests:
            self.digests[key] = sha256_hex(_tensor_bytes(self.weights[key]))
        return self.digests[key]

    def missing(self) -> list[tuple[int, str]]:
        """Bridges of the schedule that have no adapter (they run uncalibrated)."""
        return [(s, b) for s in self.schedule.bridged_steps for b in self.branches if (s, b) not in self.weights]

    def check_coverage(self, schedule: Schedule, branches, allow_uncovered: bool = False) -> list[tuple[int, str]]:
        """The bridges of `schedule` x `branches` this set has no adapter for, sorted by step.

        Such bridges would run uncalibrated (plain reuse of the cached input). Unless `allow_uncovered`,
        any of them raises a ValueError listing them; call this before generating.
        """
        branches = (branches,) if isinstance(branches, str) else tuple(branches)
        uncovered = [(s, b) for s in schedule.bridged_steps for b in branches if (s, b) not in self.weights]
        if uncovered and not allow_uncovered:
            total = len(schedule.bridged_steps) * len(branches)
            raise ValueError(
                f"adapter set covers {total - len(uncovered)} of {total} bridges of {schedule.description} over "
                f"{schedule.num_steps} steps; uncovered: {describe_bridges(uncovered)}. They would run "
                "uncalibrated: allow that explicitly (allow_uncovered=True) or calibrate the missing bridges "
                "(rerunning calibration into the set's directory trains only those)")
        return uncovered

    def coverage_report(self, schedule: Schedule, branches) -> str:
        """One line for a generation summary: which bridged steps run calibrated and which uncalibrated."""
        branches = (branches,) if isinstance(branches, str) else tuple(branches)
        bridges = [(s, b) for s in schedule.bridged_steps for b in branches]
        uncovered = self.check_coverage(schedule, branches, allow_uncovered=True)
        covered = [k for k in bridges if k not in uncovered]
        if not uncovered:
            return f"calibrated: all {len(bridges)} bridges"
        return (f"calibrated: {describe_bridges(covered) if covered else 'none'}; "
                f"uncalibrated: {describe_bridges(uncovered)}")

    def check_fits(self, transformer: torch.nn.Module, family: str, schedule: Schedule) -> None:
        """Raise ValueError saying what differs if this set was made for another model or schedule."""
        problems = []
        if family != self.family or not any(c.__name__ == self.transformer_class for c in type(transformer).__mro__):
            problems.append(f"model: set is for {self.transformer_class} ({self.family}), "
                            f"pipeline has {type(transformer).__name__} ({family})")
        digest = config_digest(transformer)
        if digest != self.config_digest:
            problems.append(f"transformer config digest: set {self.config_digest}, pipeline {digest} "
                            "(same class, different size or settings)")
        if schedule != self.schedule:
            problems.append(f"schedule: set was calibrated for {self.schedule.description} over "
                            f"{self.schedule.num_steps} steps, bridge asked for {schedule.description} over "
                            f"{schedule.num_steps} steps")
        if problems:
            raise ValueError("adapter set does not fit this pipeline: " + "; ".join(problems)
                             + ". Calibrate a set for this model and schedule (lbdist calibrate), "
                             "or enable the bridge with the set's own schedule.")

    # --- disk -------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, only: list[tuple[int, str]] | None = None) -> Path:
        """Write the set; each file is written to a temporary name and renamed, so a crash leaves no torn file.

        `only` writes just those bridges' files (the others must already be in `directory` as this set last
        loaded or saved them), then the manifest, with every file's sha256.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for key, state in sorted(self.weights.items()):
            if only is not None and key not in only:
                continue
            data = _tensor_bytes(state)
            self.digests[key] = sha256_hex(data)
            atomic_write(directory / _file_name(*key), lambda p, d=data: Path(p).write_bytes(d))
        text = json.dumps(self.manifest(), indent=2, sort_keys=False)
        atomic_write(directory / MANIFEST, lambda p: Path(p).write_text(text))
        return directory

    @classmethod
    def load(cls, source, device: str | torch.device = "cpu") -> "AdapterSet":
        """Load a set from a local directory, an fsspec URI or a Hub repo id `owner/name`.

        `source` is resolved by `lbdist.refs.resolve_ref(source, "adapters")` (or is a `Ref` from it):
        a path is never sent to the Hub, and a Hub id is fetched only when online (offline: from the cache).
        Every file is checked (names, digests, headers, keys); problems raise ValueError naming the file.
        """
        from ..refs import Ref, fetch_hub, resolve_ref

        ref = source if isinstance(source, Ref) else resolve_ref(source, "adapters")
        if ref.kind == "local":
            if not Path(ref.value).is_dir():
                raise ValueError(f"adapter set {ref.text!r}: {ref.value} is a file, not a directory")
            reader = LocalSource(Path(ref.value))
        elif ref.kind == "uri":
            reader = FsspecSource(ref.value)
        elif ref.kind == "hub":
            snapshot = fetch_hub(ref, allow_patterns=["*.json", "*.safetensors"])
            # snapshot files are symlinks into the repo's cache folder (models--o--n/blobs): confine to it
            root = snapshot.parent.parent if snapshot.parent.name == "snapshots" else snapshot
            reader = LocalSource(snapshot, root, where=ref.value)
        else:
            raise ValueError(f"adapter set {ref.text!r} is a {ref.kind} reference; give a directory, URI or Hub id")
        return cls._read(reader, device)

    @classmethod
    def _read(cls, reader, device) -> "AdapterSet":
        manifest = read_manifest(reader)
        where = reader.path_of(MANIFEST)
        header = check_header(manifest, where, READABLE_VERSIONS)
        entries = check_bridges(manifest, where, header)
        if header.version < 2:
            warnings.warn(f"{where}: format_version {header.version} has no file digests, so the set's files "
                          "were not checked; re-save it (AdapterSet.load(...).save(dir)) to add them",
                          UncheckedAdapterSetWarning, stacklevel=3)
        weights, digests = {}, {}
        for i, entry in enumerate(entries):
            data = reader.read(entry.file, f"{where}: bridges[{i}]")
            digest = sha256_hex(data)
            if entry.sha256 is not None and digest != entry.sha256:
                raise ValueError(f"{reader.path_of(entry.file)}: sha256 mismatch: the manifest says {entry.sha256}, "
                                 f"the file has {digest} (changed or corrupted after the set was written)")
            state = parse_tensors(data, reader.path_of(entry.file), header.lora)
            weights[(entry.step, entry.branch)] = {k: v.to(device) for k, v in state.items()}
            digests[(entry.step, entry.branch)] = digest
        return cls(header.family, header.transformer_class, header.config_digest, header.schedule,
                   header.branches, header.lora, weights,
                   {k: v for k, v in manifest.items() if k not in _KNOWN}, digests)

    def push_to_hub(self, repo_id: str, private: bool = True) -> str:
        """Upload the set to a Hub model repo (needs network and a token); returns the repo URL."""
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            api.upload_folder(folder_path=tmp, repo_id=repo_id)
        return f"https://huggingface.co/{repo_id}"


def _tensor_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A bridge's safetensors file, as bytes (deterministic: the digest of the same weights never changes)."""
    return safetensors_bytes({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def random_adapter_set(transformer: torch.nn.Module, schedule: Schedule, branches: tuple[str, ...] | None = None,
                       lora: LoraSettings | None = None, std: float = 0.02, seed: int = 0) -> AdapterSet:
    """An adapter set with random weights for every bridge: for tests and speed benchmarks (compute does not
    depend on weight values), never for quality."""
    from ..models import get_spec

    spec = get_spec(transformer)
    lora = lora or LoraSettings(targets=spec.lora_targets)
    targets = lora.targets or spec.lora_targets
    block = spec.final_block(transformer)
    shapes = {}
    for name in targets:
        module = block.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"LoRA target {name!r} of the final block is a {type(module).__name__}, not nn.Linear")
        shapes[name] = (module.in_features, module.out_features)
    gen = torch.Generator().manual_seed(seed)
    branches = tuple(branches or spec.branches)
    weights = {}
    for step in schedule.bridged_steps:
        for branch in branches:
            weights[(step, branch)] = {
                key: torch.randn(shape, generator=gen) * std
                for name, (fan_in, fan_out) in shapes.items()
                for key, shape in ((f"{name}.lora_A.weight", (lora.rank, fan_in)),
                                   (f"{name}.lora_B.weight", (fan_out, lora.rank)))
            }
    return AdapterSet(spec.family, spec.transformer_class.__name__, config_digest(transformer), schedule, branches,
                      LoraSettings(lora.rank, lora.alpha, targets), weights, {"random": True})
