"""Adding a model family is one spec: a fourth family (LTX-Video) registered from one `ModelSpec` generates,
bridged and calibrated-shaped, through `apply_bridge` and the `Generator`, and the registry refuses incomplete specs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

from lbdist import GenerationRequest, Generator, Schedule
from lbdist.bridge import random_adapter_set
from lbdist.models import ModelSpec, Recipe, get_spec, register_spec, unregister_spec
from lbdist.models import _small
from lbdist.toy.tokenizer import word_tokenizer


def _build(config, words=(), seed=0, vae_config=None, scheduler_config=None, text_layers=1, transformer=None):
    """A tiny LTXPipeline of the real classes (the sizes of diffusers' own LTX pipeline test, 3 blocks)."""
    tokenizer = word_tokenizer(words)
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    text_encoder = _small.t5(len(tokenizer), config["caption_channels"], text_layers)
    transformer = transformer or LTXVideoTransformer3DModel(**config)
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer, transformer=transformer)
    for module in (vae, text_encoder, transformer):
        module.eval()  # modules built in code start in training mode (T5 dropout)
    return pipe


LTX = ModelSpec(
    family="ltx_video",
    transformer_class=LTXVideoTransformer3DModel,
    pipeline_class="LTXPipeline",
    block_lists=("transformer_blocks",),
    stream_names=("hidden_states",),
    output_order=("hidden_states",),
    lora_targets=("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2"),
    output="video",
    frame_rule=4,
    branches=("cond_uncond",),  # LTXPipeline batches both guidance branches in one call under this context
    recipe=Recipe(lr=1e-4, max_epochs=1000),
    latent_tokens=lambda config, f, h, w, frames: ((frames - 1) // f[1] + 1) * (h // f[0]) * (w // f[0]),
    pixel_multiple=lambda config, f: f[0] * config["patch_size"],
    build_pipeline=_build,
    tiny_config=dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                     attention_head_dim=8, cross_attention_dim=32, num_layers=3, caption_channels=32),
    tiny_call=dict(height=32, width=32, num_frames=9, guidance_scale=3.0, max_sequence_length=16),
)


@pytest.fixture
def ltx():
    register_spec(LTX)
    yield LTX
    unregister_spec("ltx_video")


def _generator(spec):
    from lbdist.generation.loading import LoadedPipeline

    pipe = spec.build_pipeline(dict(spec.tiny_config), words="a red circle".split())
    pipe.set_progress_bar_config(disable=True)
    return Generator(LoadedPipeline(pipe, spec.family, "test:ltx", {**spec.tiny_call, "num_inference_steps": 6}))


def test_a_fourth_family_from_one_spec_generates_bridged_and_calibrated(ltx):
    generator = _generator(ltx)
    assert generator.info.family == "ltx_video" and generator.info.pixel_multiple == 4
    assert get_spec(generator.pipe.transformer) is ltx
    full = generator.generate(GenerationRequest("a red circle", seed=1), keep_latents=True)
    bridged = generator.generate(GenerationRequest("a red circle", seed=1, schedule="3"), keep_latents=True)
    assert full.frames.shape == bridged.frames.shape == (9, 32, 32, 3)
    assert bridged.steps == ["full", "bridged", "bridged"] * 2
    assert bridged.calls == {"full": 2, "bridged": 4, "calibrated": 0}
    assert not torch.equal(full.latents, bridged.latents)
    adapters = random_adapter_set(generator.pipe.transformer, Schedule.periodic(6, 3), std=0.1)
    generator.engine.adapters["rand"] = adapters
    calibrated = generator.generate(GenerationRequest("a red circle", seed=1, schedule="3", adapters="rand"),
                                    keep_latents=True)
    assert calibrated.steps == ["full", "calibrated", "calibrated"] * 2
    assert not torch.equal(calibrated.latents, bridged.latents)
    again = generator.generate(GenerationRequest("a red circle", seed=1), keep_latents=True)
    np.testing.assert_array_equal(again.frames, full.frames)  # the hooks left installed change nothing at full compute


def test_an_incomplete_spec_is_refused_naming_what_is_missing():
    with pytest.raises(ValueError, match=r"incomplete ModelSpec 'broken': .*frame_rule .*must be the VAE's temporal factor"):
        dataclasses.replace(LTX, family="broken", frame_rule=0)
    with pytest.raises(ValueError, match="output_order .* must name the stream"):
        dataclasses.replace(LTX, output_order=("encoder_hidden_states",))
    with pytest.raises(ValueError, match="already registered"):
        register_spec(dataclasses.replace(LTX, family="wan"))


def test_an_unknown_transformer_names_the_supported_ones_and_how_to_add_one():
    with pytest.raises(ValueError, match=r"no model spec for Linear; supported transformer classes: "
                                         r"WanTransformer3DModel, .*register_spec"):
        get_spec(torch.nn.Linear(2, 2))
