"""One generation with timing: the function behind `lbdist generate`, the demo and the Serve app."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .bridge import bridge_stats
from .pipelines import LoadedPipeline

_CALL_KEYS = ("height", "width", "num_frames", "guidance_scale", "max_sequence_length", "prompt_template",
              "true_cfg_scale", "negative_prompt")


@dataclass
class Generation:
    """What one call produced: frames `(F, H, W, 3)` float in [0, 1] (F = 1 for images), and timings."""

    frames: np.ndarray
    steps: int
    transformer_seconds: float
    total_seconds: float
    stats: dict = field(default_factory=dict)
    latents: torch.Tensor | None = None


@contextmanager
def transformer_timer(transformer: torch.nn.Module):
    """Accumulate wall time spent inside `transformer.forward` (synchronising CUDA around each call)."""
    total = [0.0]
    start = [0.0]
    cuda = next(transformer.parameters()).is_cuda

    def pre(module, args, kwargs):
        if cuda:
            torch.cuda.synchronize()
        start[0] = time.perf_counter()

    def post(module, args, kwargs, output):
        if cuda:
            torch.cuda.synchronize()
        total[0] += time.perf_counter() - start[0]

    handles = [transformer.register_forward_pre_hook(pre, with_kwargs=True),
               transformer.register_forward_hook(post, with_kwargs=True)]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def call_arguments(loaded: LoadedPipeline, steps: int | None, overrides: dict | None) -> dict:
    """The pipeline call arguments: the model's defaults, then explicit overrides (None values ignored)."""
    kwargs = {k: v for k, v in loaded.call_defaults.items() if k in _CALL_KEYS}
    kwargs.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not loaded.is_video:
        kwargs.pop("num_frames", None)
    kwargs["num_inference_steps"] = int(steps if steps is not None else loaded.call_defaults.get("num_inference_steps", 50))
    if kwargs["num_inference_steps"] < 1:
        raise ValueError(f"steps must be >= 1, got {kwargs['num_inference_steps']}")
    return kwargs


def run_generation(loaded: LoadedPipeline, prompt: str, *, steps: int | None = None, seed: int = 0,
                   overrides: dict | None = None, keep_latents: bool = False) -> Generation:
    """Generate `prompt` with the pipeline as it is (bridged or not); returns frames and timings."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    pipe = loaded.pipe
    kwargs = call_arguments(loaded, steps, overrides)
    before = bridge_stats(pipe)
    device = pipe._execution_device
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    final = {}
    if keep_latents:  # read the final latents through the pipeline's own step callback
        def keep(pipeline, i, t, tensors):
            final["latents"] = tensors["latents"].detach().clone()
            return {}

        kwargs.update(callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    t0 = time.perf_counter()
    with transformer_timer(pipe.transformer) as tt:
        out = pipe(prompt=prompt, generator=generator, output_type="np", **kwargs)
        frames = out.frames[0] if loaded.is_video else out.images
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    after = bridge_stats(pipe)
    stats = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    return Generation(frames, kwargs["num_inference_steps"], tt[0], total, stats, final.get("latents"))

