"""HunyuanVideo (`HunyuanVideoTransformer3DModel`, `HunyuanVideoPipeline`): everything lbdist knows about the family.

Double-stream then single-stream blocks. Both kinds take `(hidden_states, encoder_hidden_states, temb,
attention_mask, image_rotary_emb, token_replace_emb, first_frame_num_tokens)` positionally and return
`(hidden, encoder)`. Text tokens are transformed block by block, so both states are stream (cached); `temb`, the
mask and RoPE are the step's conditioning. The final block is the last single-stream block. The model is
guidance-distilled (one transformer call per step, branch `cond`).
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                       HunyuanVideoTransformer3DModel)

from . import _small
from .spec import ModelSpec, RealSize, Recipe, ToyGlue

_REAL = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
             num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
             qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
             rope_theta=256.0, rope_axes_dim=(16, 56, 56))
_REAL_VAE = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                 spatial_compression_ratio=8, temporal_compression_ratio=4)
_TINY_BENCH = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
                   num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                   text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))


def build_pipeline(config: dict, words=(), seed: int = 0, vae_config: dict | None = None,
                   scheduler_config: dict | None = None, text_layers: int = 2,
                   transformer=None) -> HunyuanVideoPipeline:
    """A `HunyuanVideoPipeline` of the real classes (Llama + CLIP text encoders) with word-level tokenizers."""
    from ..toy.tokenizer import word_tokenizer

    tokenizer = word_tokenizer(words)
    tokenizer_2 = word_tokenizer(words, model_max_length=77)
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(**(vae_config or dict(
        in_channels=3, out_channels=3, latent_channels=config["in_channels"],
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True)))
    llama = _small.llama(len(tokenizer), config["text_embed_dim"], text_layers + 1)
    clip = _small.clip(len(tokenizer_2), max(config["pooled_projection_dim"], 8), config["pooled_projection_dim"])
    transformer = transformer if transformer is not None else HunyuanVideoTransformer3DModel(**config)
    return HunyuanVideoPipeline(text_encoder=llama, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(**(scheduler_config or dict(shift=7.0))),
                                text_encoder_2=clip, tokenizer_2=tokenizer_2)


def latent_tokens(config, factors: tuple[int, int], height: int, width: int, frames: int) -> int:
    spatial, temporal = factors
    p_t, p = config["patch_size_t"], config["patch_size"]
    return (((frames - 1) // temporal + 1) // p_t) * (height // spatial // p) * (width // spatial // p)


def pixel_multiple(config, factors: tuple[int, int]) -> int:
    return factors[0] * config["patch_size"]


# --- toy trainer glue (each line mirrors HunyuanVideoPipeline) -----------------------------------------------
def _compression(pipe) -> tuple[int, int]:
    return int(pipe.vae.config.spatial_compression_ratio), int(pipe.vae.config.temporal_compression_ratio)


def _set_latent_stats(pipe, z: torch.Tensor) -> dict:
    """HunyuanVideoPipeline decodes `z / scaling_factor` (no shift field)."""
    scaling = float(1.0 / z.float().std().clamp_min(1e-3))
    pipe.vae.register_to_config(scaling_factor=scaling)
    return {"scaling_factor": scaling}


def _normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    return z * pipe.vae.config.scaling_factor


def _encode_text(pipe, prompts, max_sequence_length: int, prompt_template=None) -> dict:
    with torch.no_grad():
        emb, pooled, mask = pipe.encode_prompt(prompts, prompt_template=prompt_template,
                                               max_sequence_length=max_sequence_length, device=pipe.transformer.device)
    return {"emb": emb, "pooled": pooled, "mask": mask}


def _predict(pipe, noisy, sigma, cond, guidance):
    g = torch.full((noisy.shape[0],), guidance * 1000.0, device=noisy.device, dtype=noisy.dtype)
    return pipe.transformer(hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=cond["emb"],
                            encoder_attention_mask=cond["mask"], pooled_projections=cond["pooled"], guidance=g,
                            return_dict=False)[0]


SPEC = ModelSpec(
    family="hunyuan_video",
    transformer_class=HunyuanVideoTransformer3DModel,
    pipeline_class="HunyuanVideoPipeline",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    stream_names=("hidden_states", "encoder_hidden_states"),
    output_order=("hidden_states", "encoder_hidden_states"),
    lora_targets=("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"),
    output="video",
    frame_rule=4,
    recipe=Recipe(lr=3e-3, max_epochs=5000),
    latent_tokens=latent_tokens,
    pixel_multiple=pixel_multiple,
    build_pipeline=build_pipeline,
    tiny_config=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
                     num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                     text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)),
    tiny_call=dict(height=16, width=16, num_frames=5, guidance_scale=4.5, max_sequence_length=12,
                   prompt_template={"template": "{}", "crop_start": 0}),
    xfuser_wrapper=("xfuser.model_executor.models.transformers.transformer_hunyuan_video",
                    "xFuserHunyuanVideoTransformer3DWrapper"),
    taylorseer_modules=(r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                        r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)"),
    attention_modules=(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.attn$",),
    real_sizes={
        "hunyuan-video": RealSize(_REAL, 480, 832, 65, 256, 6.0, vae=_REAL_VAE, vae_tiling=True),
        "hunyuan-video-544p": RealSize(_REAL, 544, 960, 49, 256, 6.0, vae=_REAL_VAE, vae_tiling=True),
        "hunyuan-video-720p": RealSize(_REAL, 720, 1280, 129, 256, 6.0, vae=_REAL_VAE, vae_tiling=True),
        "tiny-hunyuan-video": RealSize(_TINY_BENCH, 32, 32, 5, 8, 6.0, vae_tiling=True,
                                       vae=dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                                norm_num_groups=4)),
    },
    toy=ToyGlue(_compression, _set_latent_stats, _normalise, _encode_text, _predict),
)
