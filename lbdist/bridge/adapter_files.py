"""Reading an adapter set's files without trusting them: name rules, confined sources, manifest checks.

Adapter sets come from the Hub and from other users, so a manifest is untrusted input:
- every file it names must be a plain file name (`step003_cond.safetensors`), read from inside the set:
  absolute paths, `..`, drive letters, UNC paths, backslashes and sub-directories are refused, and a
  symlink in a local set must resolve inside the set (for a Hub snapshot: inside that repo's cache folder,
  where the Hub client keeps the blobs its symlinks point to);
- every field is checked for presence and type, and every tensor file for its sha256 digest (format 2),
  its safetensors header and its keys, so a broken set fails with a ValueError that names the file and
  the problem, never a KeyError, TypeError or safetensors error.
`AdapterSet.load` (adapter_set.py) is the only caller.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

MANIFEST = "lbdist_adapters.json"
SUFFIX = ".safetensors"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BRANCH = re.compile(r"^[A-Za-z0-9_]+$")
_LORA_KEY = re.compile(r"^[A-Za-z0-9_.]+\.lora_[AB]\.weight$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member_name_problem(name) -> str | None:
    """Why `name` may not be a file of an adapter set, or None if it is a plain `*.safetensors` file name."""
    if not isinstance(name, str) or not name:
        return f"file must be a non-empty string, got {name!r}"
    if re.search(r"[\x00-\x1f\x7f]", name):
        return "it contains a control character"
    if name.startswith(("\\\\", "//")):
        return "it is a UNC path (\\\\host\\share)"
    if re.match(r"^[A-Za-z]:", name):
        return "it starts with a drive letter"
    if name.startswith("/") or os.path.isabs(name):
        return "it is an absolute path"
    if "\\" in name:
        return "it contains a backslash"
    if ".." in name.split("/"):
        return "it contains '..', which leaves the set's directory"
    if "/" in name:
        return "it names a sub-directory"
    if not name.endswith(SUFFIX) or name == SUFFIX:
        return f"it is not a {SUFFIX} file"
    return None


def check_member_name(name, label: str) -> str:
    problem = member_name_problem(name)
    if problem is not None:
        raise ValueError(f"{label}: file {name!r} is refused: {problem}; a manifest may only name plain file "
                         f"names inside the set's directory")
    return name


class LocalSource:
    """A set in a local directory; every file read must resolve inside `root` (default: the directory).

    `where` names the set in messages (default: the directory; a Hub snapshot is named by its repo id).
    """

    def __init__(self, directory: Path, root: Path | None = None, where: str | None = None):
        self.directory = Path(directory)
        self.root = Path(root or directory).resolve()
        self.where = where or str(self.directory)

    def path_of(self, name: str) -> str:
        return str(self.directory / name) if self.where == str(self.directory) else f"{self.where}/{name}"

    def exists(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def read(self, name: str, label: str) -> bytes:
        real = (self.directory / name).resolve()
        if not real.is_relative_to(self.root):
            raise ValueError(f"{label}: file {name!r} is refused: it is a symlink resolving outside the set "
                             f"({real})")
        if not real.is_file():
            raise ValueError(f"{label}: file {self.path_of(name)} is missing")
        return real.read_bytes()


class FsspecSource:
    """A set under an fsspec URI (s3://, gs://, memory://, ...); names are confined by `check_member_name`."""

    def __init__(self, uri: str):
        try:
            import fsspec
        except ImportError as e:
            raise ValueError(f"adapter set {uri!r} is a URI, which needs fsspec: pip install fsspec") from e
        try:
            self.fs, path = fsspec.core.url_to_fs(uri)
        except Exception as e:  # unknown protocol, missing backend package, ...
            raise ValueError(f"adapter set {uri!r}: cannot open this URI ({type(e).__name__}: {e})") from e
        self.base = path.rstrip("/")
        self.where = uri.rstrip("/")

    def path_of(self, name: str) -> str:
        return f"{self.where}/{name}"

    def exists(self, name: str) -> bool:
        try:
            return bool(self.fs.isfile(f"{self.base}/{name}"))
        except Exception as e:  # credentials, network, ...: say so rather than "no manifest"
            raise ValueError(f"adapter set {self.where!r}: cannot reach it ({type(e).__name__}: {e})") from e

    def read(self, name: str, label: str) -> bytes:
        try:
            return self.fs.cat_file(f"{self.base}/{name}")
        except FileNotFoundError:
            raise ValueError(f"{label}: file {self.path_of(name)} is missing") from None
        except Exception as e:
            raise ValueError(f"{label}: cannot read {self.path_of(name)} ({type(e).__name__}: {e})") from e


def read_manifest(source) -> dict:
    """The manifest of `source` as a dict, or ValueError naming it and what is wrong."""
    where = source.path_of(MANIFEST)
    if not source.exists(MANIFEST):
        raise ValueError(f"{source.where} has no {MANIFEST}: not an lbdist adapter set")
    data = source.read(MANIFEST, where)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{where}: must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def _field(manifest: dict, name: str, kind, where: str, what: str):
    if name not in manifest:
        raise ValueError(f"{where}: no {name!r} field ({what})")
    value = manifest[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: {name!r} must be {what}, got {type(value).__name__} {value!r:.80}")
    return value


@dataclass(frozen=True)
class Header:
    """The checked top-level fields of a manifest (everything but the bridges)."""

    version: int
    family: str
    transformer_class: str
    config_digest: str
    schedule: object
    branches: tuple[str, ...]
    lora: object


def check_header(manifest: dict, where: str, versions: tuple[int, ...]) -> Header:
    """Check the manifest's top-level fields; ValueError naming `where` and the field otherwise."""
    from .adapter_set import LoraSettings
    from .schedule import Schedule

    version = manifest.get("format_version")
    if type(version) is not int or version not in versions:
        raise ValueError(f"{where}: format_version {version!r}; this lbdist reads "
                         f"{' and '.join(map(str, versions))} (a newer set needs a newer lbdist)")
    text = {n: _field(manifest, n, str, where, "a string") for n in ("family", "transformer_class", "config_digest")}
    try:
        schedule = Schedule.from_dict(_field(manifest, "schedule", dict, where, "an object"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: 'schedule' is invalid ({type(e).__name__}: {e})") from None
    branches = _field(manifest, "branches", list, where, "a list of branch names")
    if not branches or any(not isinstance(b, str) or not _BRANCH.match(b) for b in branches) \
            or len(set(branches)) != len(branches):
        raise ValueError(f"{where}: 'branches' must be distinct names of letters, digits and _, got {branches!r:.80}")
    lora = _field(manifest, "lora", dict, where, "an object {rank, alpha, targets}")
    rank, alpha, targets = lora.get("rank"), lora.get("alpha"), lora.get("targets", [])
    if type(rank) is not int or type(alpha) not in (int, float) or not isinstance(targets, list) \
            or any(not isinstance(t, str) for t in targets):
        raise ValueError(f"{where}: 'lora' must be {{rank: int, alpha: number, targets: [str]}}, got {lora!r:.120}")
    try:
        settings = LoraSettings(rank, float(alpha), tuple(targets))
    except ValueError as e:
        raise ValueError(f"{where}: 'lora' is invalid ({e})") from None
    return Header(version, text["family"], text["transformer_class"], text["config_digest"], schedule,
                  tuple(branches), settings)


@dataclass(frozen=True)
class BridgeEntry:
    """One checked `bridges` entry: which bridge, which file, and its digest (None in format 1)."""

    step: int
    branch: str
    file: str
    sha256: str | None


def check_bridges(manifest: dict, where: str, header: Header) -> list[BridgeEntry]:
    """Check every `bridges` entry: types, a plain file name, a digest (format >= 2), no duplicates, and a
    bridge that exists in the set's schedule and branches."""
    bridges = _field(manifest, "bridges", list, where, "a list of {step, branch, file, sha256}")
    bridged, seen, entries = set(header.schedule.bridged_steps), {}, []
    for i, entry in enumerate(bridges):
        label = f"{where}: bridges[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{label} must be an object {{step, branch, file, sha256}}, got {entry!r:.80}")
        step, branch, digest = entry.get("step"), entry.get("branch"), entry.get("sha256")
        if type(step) is not int or step not in bridged:
            raise ValueError(f"{label}: step {step!r} is not a bridged step of the set's schedule "
                             f"({header.schedule.description} over {header.schedule.num_steps} steps)")
        if branch not in header.branches:
            raise ValueError(f"{label}: branch {branch!r} is not one of the set's branches {list(header.branches)}")
        name = check_member_name(entry.get("file"), label)
        if header.version >= 2 and not (isinstance(digest, str) and _SHA256.match(digest)):
            raise ValueError(f"{label}: sha256 must be 64 lowercase hex digits, got {digest!r:.80}")
        if (step, branch) in seen:
            raise ValueError(f"{label}: duplicate bridge (step {step}, branch {branch!r}), "
                             f"also bridges[{seen[step, branch]}]")
        seen[step, branch] = i
        entries.append(BridgeEntry(step, branch, name, digest if isinstance(digest, str) else None))
    return entries


def parse_tensors(data: bytes, where: str, lora) -> dict[str, torch.Tensor]:
    """A bridge's peft state dict from safetensors bytes, with its keys and shapes checked against `lora`."""
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as e:  # safetensors raises its own error type, with messages that name no file
        raise ValueError(f"{where}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    expected = {f"{t}.lora_{ab}.weight" for t in lora.targets for ab in "AB"}
    unexpected = sorted(k for k in state if (k not in expected if expected else not _LORA_KEY.match(k)))
    if unexpected:
        raise ValueError(f"{where}: unexpected tensors {unexpected[:5]}; a bridge file holds only "
                         f"<target>.lora_A.weight / .lora_B.weight for targets {list(lora.targets)}")
    missing = sorted(expected - set(state))
    if missing or not state:
        raise ValueError(f"{where}: missing tensors {missing[:5] or 'all'}")
    for key, tensor in state.items():
        dim = 0 if key.endswith("lora_A.weight") else 1
        if tensor.ndim != 2 or tensor.shape[dim] != lora.rank or not tensor.is_floating_point():
            raise ValueError(f"{where}: tensor {key} is {tensor.dtype} {tuple(tensor.shape)}; expected a 2-D "
                             f"floating-point matrix with dimension {dim} equal to the set's rank {lora.rank}")
    return state
