"""The model's output head on a final-block output: what calibration's output-space objectives train through.

After the final block every family runs a head: a LayerNorm modulated by the step's timestep embedding,
then a linear projection (`norm_out`, `proj_out`), then an unpatchify that only reorders values. The head
output is the model's prediction (the velocity, for flow matching), so an error measured there is what the
sampler integrates; the hidden-state error of the paper's objective is not (the head's LayerNorm removes
per-token scale and mean, and `proj_out` weighs directions unequally).

    sink = {}
    handle = capture_head_inputs(transformer, sink)   # during a full-compute call
    head = head_conditioning(family, block_conditioning, sink)
    velocity_tokens = apply_head(transformer, family, hidden, head)

HunyuanVideo and FLUX modulate the head with the `temb` their blocks receive; Wan with the condition
embedder's `temb` (its blocks get the 6-way `timestep_proj` instead), captured by a forward hook.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_FAMILIES = ("wan", "hunyuan_video", "flux")


def capture_head_inputs(transformer: torch.nn.Module, family: str, sink: dict):
    """Hook whatever the head needs beyond the block's arguments into `sink`; returns a removable handle or None."""
    if family == "wan":
        def keep(module, args, output):
            sink["temb"] = output[0].detach()

        return transformer.condition_embedder.register_forward_hook(keep)
    if family not in HEAD_FAMILIES:
        raise ValueError(f"no output head known for family {family!r}; known: {HEAD_FAMILIES}")
    return None


def head_conditioning(family: str, block_conditioning: dict, sink: dict) -> dict:
    """The head's conditioning at this call: `{"temb": ...}`."""
    if family == "wan":
        return {"temb": sink["temb"]}
    return {"temb": block_conditioning["temb"]}


def apply_head(transformer: torch.nn.Module, family: str, hidden: torch.Tensor, head: dict) -> torch.Tensor:
    """The head's output tokens `(B, S, C * patch)` for final-block `hidden` (before unpatchify)."""
    temb = head["temb"]
    if family == "wan":
        table = transformer.scale_shift_table
        if temb.ndim == 3:
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (transformer.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        return transformer.proj_out(x)
    if family in ("hunyuan_video", "flux"):
        return transformer.proj_out(transformer.norm_out(hidden, temb))
    raise ValueError(f"no output head known for family {family!r}; known: {HEAD_FAMILIES}")


def layer_normed(hidden: torch.Tensor) -> torch.Tensor:
    """What the head's LayerNorm sees of `hidden` (no affine): per-token mean and scale removed."""
    return F.layer_norm(hidden.float(), hidden.shape[-1:], eps=1e-6)
