"""The calibration objective of one recorded pair: the one seam both trainers call.

    loss = pair_loss(block, spec, pair, config)      # a scalar tensor with a graph to the block's LoRA weights

`block` is the final block with the bridge's LoRA active (the single-process trainer passes its peft copy of
the block; the distributed trainer, `lbdist.distributed.lora.RoutedBlock`, passes the shared frozen block with
the pair's own bridge routed in). `pair` is a `lbdist.calibrate.trainer.Pair`: the anchor's stream, the bridged
step's conditioning, the recorded target. `config` is the resolved `TrainConfig`. `context` carries whatever an
objective needs beyond the block (a `Head` for the output-space objectives; None for the paper's).

Objectives (`config.objective`, from the recipe, see `TrainConfig`):
- "hidden" (the paper): MSE between the block's hidden-state output on the pair's stream (with the bridged
  step's own conditioning) and the recorded full-compute output, under bf16 autocast on CUDA when
  `config.autocast`. Both trainers weigh it the same way (each pair by 1 / the bridge's training pairs), so the
  distributed trainer stays equal to the single-process one. The distributed trainer runs only this one.
- "output": MSE of the model output (the block output through the model's head, `head.py`) against the head
  applied to the recorded target; `context` is a `Head` (the transformer that owns the head).
- "guided": `guided_loss`, the guided output `u + g (c - u)` of a step's cond and uncond adapters fitted
  jointly (the single-process trainer only; for one branch it is "output").
The pair's stream is the anchor's cached one, or with `config.bridge_input == "extrapolate"` the first-order
extrapolation the runtime uses (`pair_stream`, through `lbdist.bridge.inputs.extrapolate`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..bridge.inputs import extrapolate
from ..models import BlockArgs, ModelSpec
from .head import apply_head

_ARGS: "weakref.WeakKeyDictionary[torch.nn.Module, BlockArgs]" = weakref.WeakKeyDictionary()


def block_args(block: torch.nn.Module) -> BlockArgs:
    """The (cached) argument plumbing of `block`'s forward."""
    args = _ARGS.get(block)
    if args is None:
        args = _ARGS[block] = BlockArgs(block)
    return args


@dataclass(frozen=True)
class Head:
    """What output-space objectives need beyond the block: the transformer owning the head, its family, and
    the guidance scale of the recording (guided objective)."""

    transformer: torch.nn.Module
    family: str
    guidance: float = 1.0


def pair_stream(pair, config) -> dict:
    """The block's stream input for `pair`: the anchor's, or its extrapolation (what the runtime computes)."""
    if getattr(config, "bridge_input", None) == "extrapolate" and getattr(pair, "previous", None) is not None:
        step, anchor, previous = pair.steps
        return extrapolate(pair.stream, pair.previous, step, anchor, previous)
    return pair.stream


def block_output(block: torch.nn.Module, spec: ModelSpec, pair, config) -> torch.Tensor:
    """The block's hidden-state output on the pair's stream with the pair's conditioning."""
    device = pair.target.device
    use_autocast = bool(config.autocast) and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
        out = block_args(block).call(block, {**pair.cond, **pair_stream(pair, config)})
    return spec.unpack_output(out)["hidden_states"]


def _head_out(context: Head, hidden: torch.Tensor, pair) -> torch.Tensor:
    if pair.head is None:
        raise ValueError("output-space objectives need the head's conditioning in the pairs: record them again with "
                         "this lbdist (lbdist.calibrate.record_pairs)")
    return apply_head(context.transformer, context.family, hidden, pair.head).float()


def output_pair(block: torch.nn.Module, spec: ModelSpec, pair, config, context: Head):
    """(predicted model output, target model output) of one pair, through the head."""
    pred = _head_out(context, block_output(block, spec, pair, config), pair)
    with torch.no_grad():
        target = _head_out(context, pair.target, pair)
    return pred, target


def pair_loss(block: torch.nn.Module, spec: ModelSpec, pair, config, context: Head | None = None) -> torch.Tensor:
    """The loss of one pair (see the module docstring); `context` (a `Head`) is needed by "output"."""
    objective = getattr(config, "objective", None) or "hidden"
    if objective == "hidden":
        pred = block_output(block, spec, pair, config)
        return F.mse_loss(pred.float(), pair.target.float())
    if context is None:
        raise ValueError(f"objective {objective!r} trains through the model's head: pass context=Head(...); the "
                         "distributed trainer runs objective 'hidden' only (recipe='paper')")
    # "output", or "guided" for one pair of one branch (the joint form is guided_loss)
    pred, target = output_pair(block, spec, pair, config, context)
    return F.mse_loss(pred, target)


def guided_loss(blocks: dict, spec: ModelSpec, pairs: dict, config, context: Head) -> torch.Tensor:
    """MSE of the guided output `u + g (c - u)`: `blocks` and `pairs` map branch -> the branch's adapted
    block and its pair of one sample (same prompt and seed); one branch: the "output" loss."""
    outs = {b: output_pair(blocks[b], spec, pairs[b], config, context) for b in pairs}
    if set(outs) != {"cond", "uncond"}:
        if len(outs) != 1:
            raise ValueError(f"the guided objective combines branches cond and uncond, got {sorted(outs)}")
        (pred, target), = outs.values()
        return F.mse_loss(pred, target)
    g = context.guidance
    pred = outs["uncond"][0] + g * (outs["cond"][0] - outs["uncond"][0])
    target = outs["uncond"][1] + g * (outs["cond"][1] - outs["uncond"][1])
    return F.mse_loss(pred, target)
