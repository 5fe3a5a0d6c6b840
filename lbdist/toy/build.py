"""Small pipelines of each family at named sizes: the test fixtures ("tiny") and the bundled toys ("toy").

`build_pipeline(family, size)` returns the family's real pipeline class (`WanPipeline`, `HunyuanVideoPipeline`,
`FluxPipeline`, or any registered family) built by its model spec's `build_pipeline` from the real diffusers /
transformers classes at small sizes, with a word-level tokenizer (`tokenizer.py`) and random weights from a fixed
seed. `size="tiny"` is the spec's own test size (a CPU generation takes well under a second). `size="toy"` is the
architecture of the bundled toy models (`tools/train_toy.py`, `lbdist/toy/weights/`): at least 8 transformer
blocks, a 4x spatial / 4x temporal VAE, 64x64 px; `size="deep"` the 24-block toys of issue 14 (same VAEs,
`lbdist/toy/depth.py` measures their final block's cost share and their size). `VAE_CONFIGS` and `SCHEDULER_CONFIGS` hold its VAE and
scheduler, and sizes absent there keep the spec builders' small defaults. `call_defaults(family, size)` holds the
call arguments that fit these pipelines (resolution, frames, text length).
"""
from __future__ import annotations

import torch

from ..models import get_spec_by_family

FAMILIES = ("wan", "hunyuan_video", "flux")  # the families with bundled toys

# Transformer configs by family and size ("tiny" comes from each model spec). Callers may add sizes.
TRANSFORMER_CONFIGS = {
    "wan": {
        "toy": dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                    out_channels=16, text_dim=64, freq_dim=64, ffn_dim=256, num_layers=8, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", rope_max_seq_len=64),
    },
    "hunyuan_video": {
        "toy": dict(in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=32, num_layers=3,
                    num_single_layers=5, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
                    guidance_embeds=True, text_embed_dim=64, pooled_projection_dim=32, rope_axes_dim=(8, 12, 12)),
    },
    "flux": {
        "toy": dict(patch_size=1, in_channels=32, num_layers=3, num_single_layers=5, attention_head_dim=32,
                    num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32,
                    axes_dims_rope=[8, 12, 12], guidance_embeds=True),
    },
}

# VAE configs by family and size (keyword arguments of the family's VAE class). Sizes missing here use the
# builders' tiny VAEs. "toy": 4x spatial (64 px -> 16x16 latents) and, for video, 4x temporal compression
# (9 frames -> 3 latent frames), so each transformer token (2x2 latent patch) covers 8x8 px; 16 latent
# channels for video (as the real Wan and HunyuanVideo VAEs; 12 of them hold a latent frame's 4 frames at
# low resolution, see lbdist/toy/flow.py), 8 for FLUX (3 anchored).
VAE_CONFIGS = {
    "wan": {"toy": dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                        scale_factor_spatial=4, scale_factor_temporal=4, latents_mean=[0.0] * 16,
                        latents_std=[1.0] * 16)},
    "hunyuan_video": {"toy": dict(in_channels=3, out_channels=3, latent_channels=16,
                                  down_block_types=("HunyuanVideoDownBlock3D",) * 3,
                                  up_block_types=("HunyuanVideoUpBlock3D",) * 3, block_out_channels=(16, 32, 32),
                                  layers_per_block=1, act_fn="silu", norm_num_groups=8, scaling_factor=1.0,
                                  spatial_compression_ratio=4, temporal_compression_ratio=4,
                                  mid_block_add_attention=True)},
    "flux": {"toy": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                         layers_per_block=1, latent_channels=8, norm_num_groups=8, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0)},
}

# Scheduler configs by family and size (FlowMatchEulerDiscreteScheduler keyword arguments). "toy": shift 3 for
# the video families (their small latents want the low shift Wan uses at 480p), and FLUX.1-dev's own
# resolution-dependent (dynamic) shift for FLUX.
SCHEDULER_CONFIGS = {
    "wan": {"toy": dict(shift=3.0)},
    "hunyuan_video": {"toy": dict(shift=3.0)},
    "flux": {"toy": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                         base_image_seq_len=256, max_image_seq_len=4096)},
}

CALL_DEFAULTS = {family: {} for family in FAMILIES}
# "toy": the bundled models' call arguments (also written to each bundle's lbdist_defaults.json).
CALL_DEFAULTS["wan"]["toy"] = dict(height=64, width=64, num_frames=9, num_inference_steps=50, guidance_scale=4.0,
                                   max_sequence_length=16)
CALL_DEFAULTS["hunyuan_video"]["toy"] = dict(height=64, width=64, num_frames=9, num_inference_steps=50,
                                             guidance_scale=4.5, max_sequence_length=16,
                                             prompt_template={"template": "{}", "crop_start": 0})
CALL_DEFAULTS["flux"]["toy"] = dict(height=64, width=64, num_inference_steps=50, guidance_scale=3.5,
                                    max_sequence_length=16)

# "deep": the toys of issue 14, as deep as the real models relative to one block (24 blocks: the final block
# plus the output head cost <= 1/20 of a forward, `lbdist.toy.depth`), narrow (width 64 = 2 heads x 32) so
# the three pipelines weigh about 15 MB in bf16, HunyuanVideo and FLUX with double : single stream blocks
# 8 : 16 (the real models: 20 : 40 and 19 : 38). VAE and scheduler as "toy"; prompts of data set v2 need 24
# text tokens.
TRANSFORMER_CONFIGS["wan"]["deep"] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=64, freq_dim=64, ffn_dim=256, num_layers=24, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64)
TRANSFORMER_CONFIGS["hunyuan_video"]["deep"] = dict(
    in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=32, num_layers=8,
    num_single_layers=16, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, guidance_embeds=True,
    text_embed_dim=64, pooled_projection_dim=32, rope_axes_dim=(8, 12, 12))
TRANSFORMER_CONFIGS["flux"]["deep"] = dict(
    patch_size=1, in_channels=32, num_layers=8, num_single_layers=16, attention_head_dim=32, num_attention_heads=2,
    joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=[8, 12, 12], guidance_embeds=True)
for _family in FAMILIES:
    VAE_CONFIGS[_family]["deep"] = VAE_CONFIGS[_family]["toy"]
    SCHEDULER_CONFIGS[_family]["deep"] = SCHEDULER_CONFIGS[_family]["toy"]
    CALL_DEFAULTS[_family]["deep"] = dict(CALL_DEFAULTS[_family]["toy"], max_sequence_length=24)


def call_defaults(family: str, size: str = "tiny") -> dict:
    """Pipeline call arguments that fit `build_pipeline(family, size)` (tiny: the model spec's own)."""
    if size == "tiny":
        return dict(get_spec_by_family(family).tiny_call)
    if size not in CALL_DEFAULTS.get(family, {}):
        raise ValueError(f"no call defaults for {family} at size {size!r}; known: tiny, {sorted(CALL_DEFAULTS.get(family, {}))}")
    return dict(CALL_DEFAULTS[family][size])


def build_pipeline(family: str, size: str = "tiny", words=(), seed: int = 0, **overrides):
    """A small pipeline of `family` at a named size; `overrides` change transformer config fields."""
    spec = get_spec_by_family(family)
    sizes = {"tiny": dict(spec.tiny_config), **TRANSFORMER_CONFIGS.get(family, {})}
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for {family}; known sizes: {sorted(sizes)}")
    pipe = spec.build_pipeline({**sizes[size], **overrides}, words=words, seed=seed,
                               vae_config=VAE_CONFIGS.get(family, {}).get(size),
                               scheduler_config=SCHEDULER_CONFIGS.get(family, {}).get(size))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # modules built in code start in training mode (T5 dropout)
    pipe.set_progress_bar_config(disable=True)
    return pipe
