"""An adapter set: one LoRA per bridge (bridged step x guidance branch) for one model and schedule.

On disk it is a directory holding `lbdist_adapters.json` (the manifest) and one safetensors file per
bridge, `step{b:03d}_{branch}.safetensors`, whose keys are peft state-dict keys relative to the final
block (`attn.to_q.lora_A.weight`, ...). Nothing is ever unpickled. The calibration step produces sets;
`enable_bridge(pipe, schedule, adapters=...)` consumes them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write
from .schedule import Schedule

MANIFEST = "lbdist_adapters.json"
FORMAT_VERSION = 1


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
    return f"step{step:03d}_{branch}.safetensors"


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
    """

    family: str
    transformer_class: str
    config_digest: str
    schedule: Schedule
    branches: tuple[str, ...]
    lora: LoraSettings
    weights: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "transformer_class": self.transformer_class,
            "config_digest": self.config_digest,
            "schedule": self.schedule.to_dict(),
            "branches": list(self.branches),
            "lora": {**asdict(self.lora), "targets": list(self.lora.targets)},
            "bridges": [
                {"step": s, "branch": b, "file": _file_name(s, b)} for (s, b) in sorted(self.weights)
            ],
            **self.extra,
        }

    def missing(self) -> list[tuple[int, str]]:
        """Bridges of the schedule that have no adapter (they run uncalibrated)."""
        return [(s, b) for s in self.schedule.bridged_steps for b in self.branches if (s, b) not in self.weights]

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

        `only` writes just those bridges' files (the others are already on disk), then the manifest.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for (step, branch), state in sorted(self.weights.items()):
            if only is not None and (step, branch) not in only:
                continue
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            atomic_write(directory / _file_name(step, branch), lambda p, t=tensors: save_file(t, str(p)))
        text = json.dumps(self.manifest(), indent=2, sort_keys=False)
        atomic_write(directory / MANIFEST, lambda p: Path(p).write_text(text))
        return directory

    @classmethod
    def load(cls, source: str | os.PathLike, device: str | torch.device = "cpu") -> "AdapterSet":
        """Load from a directory, or from a Hugging Face Hub repo id (downloaded with `snapshot_download`)."""
        directory = Path(source)
        if not directory.is_dir():
            if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
                from huggingface_hub import snapshot_download

                directory = Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors"]))
            else:
                raise ValueError(f"adapter set {str(source)!r} is not a directory (nor a Hub repo id 'owner/name')")
        path = directory / MANIFEST
        if not path.is_file():
            raise ValueError(f"{directory} has no {MANIFEST}: not an lbdist adapter set")
        manifest = json.loads(path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, "
                             f"this lbdist reads {FORMAT_VERSION}")
        weights = {}
        for entry in manifest["bridges"]:
            weights[(int(entry["step"]), entry["branch"])] = load_file(str(directory / entry["file"]), device=str(device))
        known = {"format_version", "family", "transformer_class", "config_digest", "schedule", "branches", "lora", "bridges"}
        lora = manifest["lora"]
        return cls(
            family=manifest["family"],
            transformer_class=manifest["transformer_class"],
            config_digest=manifest["config_digest"],
            schedule=Schedule.from_dict(manifest["schedule"]),
            branches=tuple(manifest["branches"]),
            lora=LoraSettings(int(lora["rank"]), float(lora["alpha"]), tuple(lora["targets"])),
            weights=weights,
            extra={k: v for k, v in manifest.items() if k not in known},
        )

    def push_to_hub(self, repo_id: str, private: bool = True) -> str:
        """Upload the set to a Hub model repo (needs network and a token); returns the repo URL."""
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            api.upload_folder(folder_path=tmp, repo_id=repo_id)
        return f"https://huggingface.co/{repo_id}"



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
