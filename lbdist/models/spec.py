"""What lbdist knows about one transformer family, in one frozen `ModelSpec`, plus the block-argument plumbing.

A `ModelSpec` says where a diffusers transformer keeps its block lists, which block is the final one, which
block inputs form the *stream* (the states carried from block to block, which the bridge caches) and in which
order a block returns them. Everything else a block receives (timestep modulation, RoPE, text states for
cross-attention, masks) is the step's own *conditioning*, which the model computes as usual at every step.

Beside the bridge's needs a spec holds everything else that differs between families, so that no other module
of lbdist branches on a family name: guidance branches, output kind and size rules, calibration recipe
defaults, sequence-parallel arithmetic and the xfuser wrapper, the module identifiers the peer caches hook,
test-size and real-size configs, and the glue the toy trainer needs. One spec per family lives beside this
file (`wan.py`, `hunyuan_video.py`, `flux.py`); `lbdist.models.register_spec` adds more (see README, "Add a
model family").
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

import torch

OUTPUTS = ("video", "image")


@dataclass(frozen=True)
class Recipe:
    """Calibration defaults of a family (the authors' scheduler defaults).

    lr: AdamW learning rate of each bridge's LoRA.
    max_epochs: epoch cap per bridge (one epoch = one optimiser step over the bridge's training pairs).
    """

    lr: float
    max_epochs: int


@dataclass(frozen=True)
class RealSize:
    """A released model's transformer config and the shape it generates, for speed benchmarks (random weights).

    config: the diffusers transformer config (keyword arguments of the transformer class).
    height, width, frames: the output size (frames 1 for images).
    text_tokens: prompt length the benchmark feeds (the pipeline's `max_sequence_length`).
    guidance: guidance scale the pipeline uses (true CFG for families with two branches).
    factors: (spatial, temporal) compression of the VAE at this size (the pipeline's `vae_scale_factor`s;
        temporal 1 for images): the benchmarks' token counts use it without building the VAE.
    vae: keyword arguments of the family's VAE class for whole-pipeline benchmarks (the released VAE's config,
        random weights; a small one with the same factors for CPU stand-ins); None: the family builder's small VAE.
    vae_tiling: decode in tiles (`vae.enable_tiling()`), as the family's own examples do where an untiled decode
        would not fit on one GPU.
    """

    config: Mapping[str, Any]
    height: int
    width: int
    frames: int = 1
    text_tokens: int = 512
    guidance: float = 5.0
    factors: tuple[int, int] = (8, 4)
    vae: Mapping[str, Any] | None = None
    vae_tiling: bool = False

    def label(self) -> str:
        return f"{self.height}x{self.width}" + (f"x{self.frames}" if self.frames > 1 else "")


@dataclass(frozen=True)
class ToyGlue:
    """What the toy trainer (`lbdist.toy.train`) needs to train a family's pipeline exactly as it samples.

    compression(pipe) -> (spatial, temporal): the VAE's compression factors (temporal 1 for images).
    set_latent_stats(pipe, raw) -> dict: write latent statistics into the VAE config fields decode uses.
    normalise(pipe, raw) -> latents in the space the transformer samples in.
    encode_text(pipe, prompts, max_sequence_length, prompt_template) -> dict of batch-first tensors.
    predict(pipe, noisy, sigma, cond, guidance) -> velocity for unpacked latents at noise levels `sigma`.
    train_sdpa: torch SDPA backends (`"flash"`, `"math"`, ...) training steps on CUDA are restricted to; empty:
        torch's choice. FLUX sets ("flash", "math"): its first bf16 backward crashed on H100/H200 with the default
        choice (cuDNN attention suspected; unverified on a GPU since).
    """

    compression: Callable
    set_latent_stats: Callable
    normalise: Callable
    encode_text: Callable
    predict: Callable
    train_sdpa: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Static description of one diffusers transformer family.

    Attributes:
        family: short name used in manifests, CLI output and `toy:` / `tiny:` references.
        transformer_class: the diffusers class this spec describes (matched by `isinstance`, so xfuser's
            sequence-parallel subclasses match too).
        pipeline_class: the diffusers pipeline class that drives the transformer (its name).
        block_lists: attribute names of the `nn.ModuleList`s of blocks, in the order `forward` runs them.
        stream_names: block parameters carried from block to block (cached by the bridge).
        output_order: the order in which every block returns the stream; one name: the block returns a tensor.
        lora_targets: module names inside the final block that receive LoRA adapters.
        branches: guidance branches (`cache_context` names) the pipeline runs as separate transformer calls
            when guidance is on; one adapter per bridged step and branch.
        output: "video" or "image".
        frame_rule: for video, the VAE's temporal factor t: valid frame counts are `t k + 1`; 0 for images.
        recipe: calibration defaults (`Recipe`).
        xfuser_wrapper: `(module, class name)` of xfuser's sequence-parallel subclass of the transformer, or
            None when the family has none.
        latent_tokens: `(transformer_config, pipe_factors, height, width, frames) -> int`, the image/video tokens
            the transformer sees (the pipeline's own arithmetic); `pipe_factors` is `(spatial, temporal)`.
        pixel_multiple: `(transformer_config, pipe_factors) -> int`, what height and width must be multiples of
            (VAE factor times the transformer's spatial patch).
        taylorseer_modules: `re.fullmatch` identifiers of the attention / FFN modules TaylorSeerCache hooks.
        attention_modules: `re.search` identifiers of the self-attention modules PAB / FasterCache hook.
        build_pipeline: `(transformer_config, words, seed, vae_config, scheduler_config, text_layers)` -> a small
            pipeline of the real classes with a word-level tokenizer (test fixtures and toy models).
        tiny_config: transformer config of the test-size pipeline (a CPU generation well under a second).
        tiny_call: pipeline call arguments that fit the test-size pipeline.
        real_sizes: named `RealSize`s of the released models (speed benchmarks).
        call_extras: extra pipeline call arguments the family always needs beside lbdist's request fields
            (HunyuanVideo's prompt template for word-level tokenizers is passed by the toy defaults instead).
        toy: glue for the toy trainer (`ToyGlue`), or None if the family has no toy.
    """

    family: str
    transformer_class: type
    pipeline_class: str
    block_lists: tuple[str, ...]
    stream_names: tuple[str, ...]
    output_order: tuple[str, ...]
    lora_targets: tuple[str, ...]
    output: str
    recipe: Recipe
    latent_tokens: Callable[..., int]
    pixel_multiple: Callable[..., int]
    build_pipeline: Callable[..., Any]
    tiny_config: Mapping[str, Any]
    tiny_call: Mapping[str, Any]
    branches: tuple[str, ...] = ("cond",)
    frame_rule: int = 0
    xfuser_wrapper: tuple[str, str] | None = None
    taylorseer_modules: tuple[str, ...] = ()
    attention_modules: tuple[str, ...] = ()
    real_sizes: Mapping[str, RealSize] = field(default_factory=dict)
    toy: ToyGlue | None = None

    def __post_init__(self):
        check_complete(self)

    # --- blocks ---------------------------------------------------------------------------------------------
    @property
    def is_video(self) -> bool:
        return self.output == "video"

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """All blocks in execution order; the last one is the final block."""
        return [block for name in self.block_lists for block in getattr(transformer, name)]

    def final_block(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return self.blocks(transformer)[-1]

    def final_block_name(self, transformer: torch.nn.Module) -> str:
        last = self.block_lists[-1]
        return f"{last}.{len(getattr(transformer, last)) - 1}"

    def pack_output(self, stream: dict[str, torch.Tensor]) -> Any:
        """Arrange stream tensors the way this family's blocks return them."""
        if len(self.output_order) == 1:
            return stream[self.output_order[0]]
        return tuple(stream[name] for name in self.output_order)

    def unpack_output(self, output: Any) -> dict[str, torch.Tensor]:
        if len(self.output_order) == 1:
            return {self.output_order[0]: output}
        return dict(zip(self.output_order, output))

    def only_final_block(self, transformer: torch.nn.Module) -> dict[str, torch.nn.ModuleList]:
        """Views of the block lists holding only the final block (the others empty), to swap in for a call.

        Returns the lists to put back. Used by the bridge's step hook and by benchmarks that time a bridged
        step; building the views costs a few microseconds whatever the depth.
        """
        modules = transformer._modules
        saved = {name: modules[name] for name in self.block_lists}
        for name in self.block_lists[:-1]:
            modules[name] = torch.nn.ModuleList()
        modules[self.block_lists[-1]] = torch.nn.ModuleList([saved[self.block_lists[-1]][-1]])
        return saved

    # --- sizes ----------------------------------------------------------------------------------------------
    def valid_frames(self, frames: int) -> bool:
        return self.frame_rule == 0 or (frames >= 1 and (frames - 1) % self.frame_rule == 0)


def check_complete(spec: ModelSpec) -> None:
    """Raise ValueError listing every missing or malformed piece of a spec (run when a spec is built)."""
    problems = []
    if not isinstance(spec.family, str) or not spec.family.isidentifier():
        problems.append(f"family {spec.family!r} must be an identifier such as 'wan'")
    if not isinstance(spec.transformer_class, type) or not issubclass(spec.transformer_class, torch.nn.Module):
        problems.append(f"transformer_class {spec.transformer_class!r} must be a torch.nn.Module subclass")
    for name in ("block_lists", "stream_names", "output_order", "lora_targets", "branches"):
        value = getattr(spec, name)
        if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{name} must be a non-empty tuple of names, got {value!r}")
    if set(spec.output_order or ()) != set(spec.stream_names or ()):
        problems.append(f"output_order {spec.output_order} must name the stream {spec.stream_names}")
    if spec.output not in OUTPUTS:
        problems.append(f"output {spec.output!r} must be one of {OUTPUTS}")
    if type(spec.frame_rule) is not int or spec.frame_rule < 0 or (spec.output == "video") != (spec.frame_rule > 0):
        problems.append(f"frame_rule {spec.frame_rule!r} must be the VAE's temporal factor (>= 1) for video, 0 for images")
    if not isinstance(spec.recipe, Recipe):
        problems.append(f"recipe must be a Recipe, got {type(spec.recipe).__name__}")
    for name in ("latent_tokens", "pixel_multiple", "build_pipeline"):
        if not callable(getattr(spec, name)):
            problems.append(f"{name} must be callable")
    if not isinstance(spec.pipeline_class, str) or not spec.pipeline_class:
        problems.append("pipeline_class must name the diffusers pipeline class")
    if spec.xfuser_wrapper is not None and (len(spec.xfuser_wrapper) != 2 or not all(spec.xfuser_wrapper)):
        problems.append(f"xfuser_wrapper must be (module, class name) or None, got {spec.xfuser_wrapper!r}")
    if not spec.tiny_config or not isinstance(spec.tiny_config, Mapping):
        problems.append("tiny_config (the test-size transformer config) is missing")
    if spec.toy is not None and not isinstance(spec.toy, ToyGlue):
        problems.append("toy must be a ToyGlue or None")
    if problems:
        raise ValueError(f"incomplete ModelSpec {getattr(spec, 'family', '?')!r}: " + "; ".join(problems))


SPEC_FIELDS = tuple(f.name for f in fields(ModelSpec))


class BlockArgs:
    """Reads and replaces named arguments of one block class's `forward`, however it was called.

    Built once per block from the signature, so the per-call cost is a dict lookup or a tuple index:
    Wan and HunyuanVideo call their blocks positionally, FLUX by keyword.
    """

    def __init__(self, block: torch.nn.Module):
        forward = type(block).forward
        self.signature = inspect.signature(forward)
        params = list(self.signature.parameters.values())[1:]  # drop self
        self.positions = {
            p.name: i for i, p in enumerate(params)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
        self._bind_self = block

    def get(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        pos = self.positions[name]
        return args[pos] if pos < len(args) else self.signature.parameters[name].default

    def replace(self, values: dict[str, Any], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs = list(args), dict(kwargs)
        for name, value in values.items():
            pos = self.positions[name]
            if name in kwargs or pos >= len(args):
                kwargs[name] = value
            else:
                args[pos] = value
        return tuple(args), kwargs

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Every argument by name (defaults applied; `*args` kept under its own name)."""
        bound = self.signature.bind(self._bind_self, *args, **kwargs)
        bound.apply_defaults()
        out = dict(bound.arguments)
        out.pop("self", None)
        return out

    def call(self, block: torch.nn.Module, arguments: dict[str, Any]) -> Any:
        """Call `block` with arguments as returned by `bind` (possibly with some values replaced)."""
        bound = self.signature.bind_partial(block)
        bound.arguments.update(arguments)
        return block(*bound.args[1:], **bound.kwargs)
