"""Wan2.1 / Wan2.2 (`WanTransformer3DModel`, `WanPipeline`): everything lbdist knows about the family.

`WanTransformerBlock.forward(hidden_states, encoder_hidden_states, temb, rotary_emb)`: only the video tokens flow
from block to block; the text states enter every block through cross-attention, so they are conditioning (each
guidance branch has its own, and the bridge uses the current step's). With guidance on, `WanPipeline` runs the
`cond` and `uncond` branches as two transformer calls per step, so the bridge keeps one cache and one adapter
per branch. LoRA targets every linear layer of the final block's attention and FFN, as the authors' trainer.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from . import _small
from .spec import ModelSpec, RealSize, Recipe, ToyGlue

_ATTN = ("to_q", "to_k", "to_v", "to_out.0")

_REAL_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
_REAL_14B = dict(_REAL_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
_REAL_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True])


def build_pipeline(config: dict, words=(), seed: int = 0, vae_config: dict | None = None,
                   scheduler_config: dict | None = None, text_layers: int = 2, transformer=None) -> WanPipeline:
    """A `WanPipeline` of the real classes at the given transformer config, with a word-level tokenizer."""
    from ..toy.tokenizer import word_tokenizer

    tokenizer = word_tokenizer(words)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**(vae_config or dict(base_dim=3, z_dim=config["in_channels"], dim_mult=[1, 1, 1, 1],
                                                 num_res_blocks=1, temperal_downsample=[False, True, True])))
    text_encoder = _small.t5(len(tokenizer), config["text_dim"], text_layers)
    transformer = transformer if transformer is not None else WanTransformer3DModel(**config)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(**(scheduler_config or dict(shift=3.0))))


def latent_tokens(config, factors: tuple[int, int], height: int, width: int, frames: int) -> int:
    spatial, temporal = factors
    if frames % temporal != 1:
        frames = frames // temporal * temporal + 1  # WanPipeline rounds num_frames the same way
    p_t, p_h, p_w = config["patch_size"]
    return (((frames - 1) // temporal + 1) // p_t) * (height // spatial // p_h) * (width // spatial // p_w)


def pixel_multiple(config, factors: tuple[int, int]) -> int:
    return factors[0] * config["patch_size"][1]


# --- toy trainer glue (each line mirrors WanPipeline) ---------------------------------------------------------
def _compression(pipe) -> tuple[int, int]:
    return int(pipe.vae.config.scale_factor_spatial), int(pipe.vae.config.scale_factor_temporal)


def _set_latent_stats(pipe, z: torch.Tensor) -> dict:
    """WanPipeline decodes `z * latents_std + latents_mean` per channel."""
    z = z.float()
    dims = [d for d in range(z.ndim) if d != 1]
    mean, std = z.mean(dim=dims).tolist(), z.std(dim=dims).clamp_min(1e-3).tolist()
    pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
    return {"latents_mean": mean, "latents_std": std}


def _normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (z.ndim - 2)
    mean = torch.tensor(pipe.vae.config.latents_mean, device=z.device, dtype=z.dtype).view(shape)
    std = torch.tensor(pipe.vae.config.latents_std, device=z.device, dtype=z.dtype).view(shape)
    return (z - mean) / std


def _encode_text(pipe, prompts, max_sequence_length: int, prompt_template=None) -> dict:
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                    max_sequence_length=max_sequence_length, device=pipe.transformer.device)
    return {"emb": emb}


def _predict(pipe, noisy, sigma, cond, guidance):
    return pipe.transformer(hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=cond["emb"],
                            return_dict=False)[0]


SPEC = ModelSpec(
    family="wan",
    transformer_class=WanTransformer3DModel,
    pipeline_class="WanPipeline",
    block_lists=("blocks",),
    stream_names=("hidden_states",),
    output_order=("hidden_states",),
    lora_targets=tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in _ATTN) + ("ffn.net.0.proj", "ffn.net.2"),
    output="video",
    frame_rule=4,
    branches=("cond", "uncond"),
    recipe=Recipe(lr=1e-4, max_epochs=5000),
    latent_tokens=latent_tokens,
    pixel_multiple=pixel_multiple,
    build_pipeline=build_pipeline,
    tiny_config=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                     out_channels=16, text_dim=32, freq_dim=32, ffn_dim=48, num_layers=4, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
    tiny_call=dict(height=16, width=16, num_frames=5, guidance_scale=4.0, max_sequence_length=12),
    xfuser_wrapper=("xfuser.model_executor.models.transformers.transformer_wan", "xFuserWanTransformer3DWrapper"),
    taylorseer_modules=(r"blocks\.\d+\.(attn1|attn2|ffn)",),
    attention_modules=(r"^blocks\.\d+\.attn1$",),
    real_sizes={
        "wan-1.3b": RealSize(_REAL_1_3B, 480, 832, 81, 512, 5.0, vae=_REAL_VAE),
        "wan-14b": RealSize(_REAL_14B, 480, 832, 81, 512, 5.0, vae=_REAL_VAE),
        "wan-14b-720p": RealSize(_REAL_14B, 720, 1280, 81, 512, 5.0, vae=_REAL_VAE),
        "tiny-wan": RealSize(dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                  out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=3,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
                             32, 32, 5, 8, 5.0,
                             vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)),
    },
    toy=ToyGlue(_compression, _set_latent_stats, _normalise, _encode_text, _predict),
)
