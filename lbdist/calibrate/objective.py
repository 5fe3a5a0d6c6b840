"""The calibration objective of one recorded pair: the one seam both trainers call.

    loss = pair_loss(block, spec, pair, config)      # a scalar tensor with a graph to the block's LoRA weights

`block` is the final block with the bridge's LoRA active (the single-process trainer passes its peft copy of
the block; the distributed trainer, `lbdist.distributed.lora.RoutedBlock`, passes the shared frozen block with
the pair's own bridge routed in). `pair` is a `lbdist.calibrate.trainer.Pair`: the anchor's stream, the bridged
step's conditioning, the recorded target. `config` is the resolved `TrainConfig`. `context` carries whatever an
objective needs beyond the block (None today; an output-space objective would pass the model's head here).

Today's objective is the paper's: MSE between the block's hidden-state output on the anchor's cached stream
(with the bridged step's own conditioning) and the recorded full-compute output, under bf16 autocast on CUDA
when `config.autocast`. Both trainers weigh it the same way (each pair by 1 / the bridge's training pairs), so
changing it here changes both, and the distributed trainer stays equal to the single-process one.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from ..models import BlockArgs, ModelSpec

_ARGS: "weakref.WeakKeyDictionary[torch.nn.Module, BlockArgs]" = weakref.WeakKeyDictionary()


def block_args(block: torch.nn.Module) -> BlockArgs:
    """The (cached) argument plumbing of `block`'s forward."""
    args = _ARGS.get(block)
    if args is None:
        args = _ARGS[block] = BlockArgs(block)
    return args


def block_output(block: torch.nn.Module, spec: ModelSpec, pair, config) -> torch.Tensor:
    """The block's hidden-state output on the pair's stream with the pair's conditioning."""
    device = pair.target.device
    use_autocast = bool(config.autocast) and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
        out = block_args(block).call(block, {**pair.cond, **pair.stream})
    return spec.unpack_output(out)["hidden_states"]


def pair_loss(block: torch.nn.Module, spec: ModelSpec, pair, config, context=None) -> torch.Tensor:
    """The loss of one pair (see the module docstring); `context` is unused by this objective."""
    pred = block_output(block, spec, pair, config)
    return F.mse_loss(pred.float(), pair.target.float())
