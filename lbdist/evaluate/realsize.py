"""Real-size transformers with random weights, the pipelines around them and the inputs of one denoising step.

What the GPU speed benchmarks build. Compute does not depend on weight values, so a transformer of a released
config with random weights, built directly on the GPU in bf16, times the same as the checkpoint. The configs and
shapes are the families' own (`ModelSpec.real_sizes`, e.g. `wan-14b`, `hunyuan-video-720p`, `flux-dev`); names
starting with `tiny-` are CPU stand-ins that run the same code paths in seconds (`--quick`).

    model = build_transformer("wan-14b", "cuda", torch.bfloat16)
    latents, kwargs_at = step_inputs("wan-14b", model, "cuda", torch.bfloat16)
    model(**kwargs_at(latents, 0.5))                    # one full step, as WanPipeline calls it

`step_inputs` takes the transformer's keyword arguments from a real call of the family's pipeline (small random
text encoders of the transformer's text width, a prompt that fills every text token), so no per-family code is
needed here; token counts come from the spec's `latent_tokens`, split checks from `lbdist.parallel.degree`.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Callable

import torch

from ..models import ModelSpec, RealSize, specs

QUICK_PREFIX = "tiny-"
WORDS = "a red circle moves left blue square up green triangle right yellow down".split()
_SIZE_KEYS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "max_sequence_length")


def lookup(name: str) -> tuple[ModelSpec, RealSize]:
    """(family spec, size) of a real-size name."""
    for spec in specs():
        if name in spec.real_sizes:
            return spec, spec.real_sizes[name]
    raise ValueError(f"unknown real size {name!r}; known: {', '.join(names())}")


def names() -> tuple[str, ...]:
    """Every real-size name of every registered family, in registry order."""
    return tuple(name for spec in specs() for name in spec.real_sizes)


def quick_names() -> tuple[str, ...]:
    """The CPU stand-ins (`tiny-*`), one per family that has one."""
    return tuple(name for name in names() if name.startswith(QUICK_PREFIX))


@contextmanager
def building(device, dtype: torch.dtype):
    """Modules created inside are allocated on `device` in `dtype` (no CPU copy first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(name: str, device="cuda", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The transformer of a real size with random weights, built directly on `device` in `dtype`."""
    spec, size = lookup(name)
    with building(device, dtype):
        model = spec.transformer_class(**dict(size.config))
    return model.eval().requires_grad_(False)


def latent_tokens(name: str) -> int:
    """Image/video tokens the transformer sees at this size (the family spec's arithmetic)."""
    spec, size = lookup(name)
    return int(spec.latent_tokens(size.config, size.factors, size.height, size.width, size.frames))


def check_split(name: str, degree: int) -> str:
    """Raise `DegreeError` unless `name` splits evenly over Ulysses degree `degree`; return the arithmetic."""
    from ..parallel.degree import check_heads, check_tokens

    spec, size = lookup(name)
    tokens = latent_tokens(name)
    check_tokens(spec.family, tokens, degree, f"{name} at {size.label()}")
    check_heads(spec.family, size.config, degree)
    heads = int(size.config["num_attention_heads"])
    return f"{name} at {size.label()}: {tokens} tokens % {degree} = 0; {heads} heads % {degree} = 0"


def call_kwargs(name: str) -> dict:
    """Pipeline call arguments of a real size (size, guidance, text length, and the family's fixed extras)."""
    spec, size = lookup(name)
    kwargs = {k: v for k, v in spec.tiny_call.items() if k not in _SIZE_KEYS}  # e.g. HunyuanVideo's prompt template
    kwargs.update(height=size.height, width=size.width, guidance_scale=size.guidance,
                  max_sequence_length=size.text_tokens)
    if spec.is_video:
        kwargs["num_frames"] = size.frames
    return kwargs


def full_prompt(tokens: int) -> str:
    """A prompt that fills `tokens` text positions (words plus the end token): no padding, so no text mask."""
    return " ".join(itertools.islice(itertools.cycle(WORDS), max(tokens - 1, 1)))


VAES = ("size", "small")


def bench_pipeline(name: str, transformer: torch.nn.Module, device="cuda", dtype: torch.dtype = torch.bfloat16,
                   seed: int = 0, vae: str = "size"):
    """The family's real diffusers pipeline around an already built transformer (plain or xfuser-wrapped): small
    random text encoders of the transformer's text width (one layer) and a VAE with random weights, built on
    `device`. `pipe(prompt=...)` runs end to end, so pipeline-level code is exercised at real sequence lengths.

    vae: "size" takes the size's VAE (`RealSize.vae`: the released one for real sizes); "small" the family
        builder's small VAE, which decodes in a fraction of the time (refused unless it has the size's factors).
    """
    from ..generation.loading import pipe_factors

    if vae not in VAES:
        raise ValueError(f"vae must be one of {VAES}, got {vae!r}")
    spec, size = lookup(name)
    config = dict(size.vae) if vae == "size" and size.vae is not None else None
    with building(device, dtype):
        pipe = spec.build_pipeline(dict(size.config), words=WORDS, seed=seed, text_layers=1, transformer=transformer,
                                   vae_config=config)
    if tuple(pipe_factors(pipe)) != tuple(size.factors):
        raise ValueError(f"{name}: the {vae} VAE of {spec.family} compresses {pipe_factors(pipe)} (spatial, temporal), "
                         f"the size needs {tuple(size.factors)}; use vae='size'")
    if size.vae_tiling and config is not None:
        pipe.vae.enable_tiling()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def loaded_pipeline(name: str, transformer: torch.nn.Module, steps: int, device="cuda",
                    dtype: torch.dtype = torch.bfloat16, vae: str = "size"):
    """`bench_pipeline` as a `LoadedPipeline` whose defaults are the size's call arguments (for `Engine`)."""
    from ..generation.loading import LoadedPipeline

    spec, _ = lookup(name)
    defaults = {**call_kwargs(name), "num_inference_steps": steps}
    pipe = bench_pipeline(name, transformer, device, dtype, vae=vae)
    return LoadedPipeline(pipe, spec.family, f"realsize:{name}", defaults)


def realsize_pipeline(name: str, device: str = "cuda", dtype: str = "bfloat16", steps: int = 50, seed: int = 0):
    """A pipeline factory for worker groups and render actors (`PipelineFactory("lbdist.evaluate.realsize:
    realsize_pipeline", {"name": ...})`): the size's transformer with seeded random weights (every rank builds the
    same), small text encoders and the size's VAE, and the size's call arguments as defaults."""
    from ..generation.loading import resolve_dtype

    torch_dtype = resolve_dtype(dtype, device)
    torch.manual_seed(seed)
    return loaded_pipeline(name, build_transformer(name, device, torch_dtype), steps, device, torch_dtype)


class _Captured(Exception):
    """Raised by the capture hook to stop the pipeline before the transformer runs."""


def step_inputs(name: str, model: torch.nn.Module, device="cuda", dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> tuple[torch.Tensor, Callable[[torch.Tensor, float], dict]]:
    """(latents, kwargs_at): `kwargs_at(x, sigma)` gives `model`'s keyword arguments for one step at noise level
    `sigma` in [0, 1] with latents `x`, exactly as the family's pipeline passes them (its first call is captured
    before the transformer runs; the timestep is rescaled from the schedule's first noise level)."""
    _, size = lookup(name)
    pipe = bench_pipeline(name, model, device, dtype, seed)
    captured: dict = {}

    def grab(module, args, kwargs):
        captured.update(kwargs)
        raise _Captured

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(prompt=full_prompt(size.text_tokens), num_inference_steps=2, output_type="latent",
                 generator=torch.Generator("cpu").manual_seed(seed), **call_kwargs(name))
    except _Captured:
        pass
    finally:
        handle.remove()
    if "hidden_states" not in captured or "timestep" not in captured:
        raise RuntimeError(f"{type(pipe).__name__} did not call the transformer by keyword; "
                           f"captured {sorted(captured)}")
    sigma0 = float(pipe.scheduler.sigmas[0])
    latents, t0 = captured.pop("hidden_states"), captured.pop("timestep")
    del pipe

    def kwargs_at(x: torch.Tensor, sigma: float) -> dict:
        return {**captured, "hidden_states": x, "timestep": t0 * (float(sigma) / sigma0)}

    return latents, kwargs_at


def sigmas(steps: int, shift: float = 5.0) -> list[float]:
    """Flow-matching noise levels for `steps` Euler steps (with the usual time shift), ending at 0."""
    if type(steps) is not int or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return [shift * s / (1 + (shift - 1) * s) for s in (1.0 - i / steps for i in range(steps + 1))]
