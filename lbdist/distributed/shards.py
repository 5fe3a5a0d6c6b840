"""One recorded pair as one self-contained file (a *shard*): safetensors bytes plus the pair's structure.

A shard holds the anchor's stream, the bridged step's conditioning and the target of one (bridge, prompt), as
tensors `t0, t1, ...`, and in the safetensors metadata the pair's entry (`lbdist_pair`: prompt, step, branch,
anchor, and the stream / conditioning / target structures naming those tensors, in `TensorStore`'s tree
format). Shards are written per bridge (`pairs/step005_cond/prompt0003.safetensors`) and indexed per prompt with
their sha256 and size, so a partial or corrupted shard is found before training trusts it. Nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..calibrate.store import encode_tree

META_KEY = "lbdist_pair"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Names:
    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, t: torch.Tensor) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = t.detach().to("cpu").contiguous()
        return name

    def tree(self, value: Any) -> Any:
        return encode_tree(value, self.add)


def encode_pair(entry: dict, stream: dict[str, torch.Tensor], cond: dict, target: torch.Tensor) -> bytes:
    """The shard of one pair: `entry` (prompt, step, branch, anchor) plus its tensors."""
    names = _Names()
    full = {**entry, "stream": {k: names.add(v) for k, v in stream.items()}, "cond": names.tree(cond),
            "target": names.add(target)}
    return save_bytes(names.tensors, metadata={META_KEY: json.dumps(full)})


def _untree(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "seq" in node:
        items = [_untree(v, tensors) for v in node["seq"]]
        return tuple(items) if node["tuple"] else items
    if "map" in node:
        return {k: _untree(v, tensors) for k, v in node["map"].items()}
    return node["value"]


def read_meta(data: bytes) -> dict:
    """The entry stored in a shard's safetensors header (without loading its tensors)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return json.loads(header["__metadata__"][META_KEY])


def decode_pair(data: bytes, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The `Pair` a shard holds (tensors on `device`; floating tensors cast to `dtype` if given)."""
    from ..calibrate.trainer import Pair

    entry = read_meta(data)
    tensors = {}
    for name, t in load_bytes(data).items():
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.to(device)
    return Pair(entry["prompt"], {k: tensors[v] for k, v in entry["stream"].items()}, _untree(entry["cond"], tensors),
                tensors[entry["target"]])
