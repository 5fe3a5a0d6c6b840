"""Where recorded bridge pairs live on disk: a content-addressed tensor store plus a JSON-lines index.

Every tensor is written once, as `tensors/<digest>.safetensors` (digest = BLAKE2 of dtype, shape and
bytes), so what repeats across steps (RoPE tables, text states of a branch) is stored once. A *pair* is
one line of `pairs.jsonl`: prompt index, bridged step, branch, anchor step, and for the cached stream at
the anchor, the step's conditioning and the target output, a *structure* naming digests. Structures may
nest tuples, lists, dicts, None, numbers and strings, which is what blocks take (`rotary_emb` is a tuple
of tensors, HunyuanVideo passes ints positionally). Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write

INDEX = "pairs.jsonl"
MANIFEST = "pairs_manifest.json"


def digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).reshape(-1).cpu().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encode_tree(value: Any, put: Callable[[torch.Tensor], str]) -> Any:
    """A block argument (tensors in tuples, lists, dicts and plain values) as a JSON-able structure, every tensor
    replaced by {"tensor": put(tensor)}; `TensorStore.get_tree` reads it back."""
    if isinstance(value, torch.Tensor):
        return {"tensor": put(value)}
    if isinstance(value, (tuple, list)):
        return {"seq": [encode_tree(v, put) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict):
        return {"map": {str(k): encode_tree(v, put) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot record a block argument of type {type(value).__name__}")


class TensorStore:
    """Writes each distinct tensor once; reads tensors back by digest (optionally onto a device)."""

    def __init__(self, root: str | os.PathLike):
        self.dir = Path(root) / "tensors"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.written = 0  # new files written by this process (dedup hits do not count)

    def put(self, t: torch.Tensor) -> str:
        key = digest(t)
        path = self.dir / f"{key}.safetensors"
        if not path.exists():
            cpu = t.detach().to("cpu").contiguous()
            atomic_write(path, lambda tmp: save_file({"t": cpu}, tmp))
            self.written += 1
        return key

    def get(self, key: str, device: str | torch.device = "cpu") -> torch.Tensor:
        path = self.dir / f"{key}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"recorded tensor {key} is missing from {self.dir} (incomplete recording?)")
        return load_file(str(path), device=str(device))["t"]

    def put_tree(self, value: Any) -> Any:
        """A JSON-able structure with every tensor replaced by {"tensor": digest}."""
        return encode_tree(value, self.put)

    def get_tree(self, node: Any, device="cpu") -> Any:
        if "tensor" in node:
            return self.get(node["tensor"], device)
        if "seq" in node:
            items = [self.get_tree(v, device) for v in node["seq"]]
            return tuple(items) if node["tuple"] else items
        if "map" in node:
            return {k: self.get_tree(v, device) for k, v in node["map"].items()}
        return node["value"]


def read_index(root: str | os.PathLike) -> list[dict]:
    path = Path(root) / INDEX
    if not path.is_file():
        return []
    entries = []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON (only a torn last line is tolerated)")
    return entries


def append_index(root: str | os.PathLike, entries: list[dict]) -> None:
    """Append entries in one write (a crash leaves whole lines; a torn last line is ignored on read)."""
    if entries:
        with open(Path(root) / INDEX, "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())


def read_manifest(root: str | os.PathLike) -> dict | None:
    path = Path(root) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(root: str | os.PathLike, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2)
    atomic_write(Path(root) / MANIFEST, lambda tmp: Path(tmp).write_text(text))
