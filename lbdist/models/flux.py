"""FLUX.1 (`FluxTransformer2DModel`, `FluxPipeline`): everything lbdist knows about the family.

Double-stream then single-stream blocks, both called by keyword `(hidden_states, encoder_hidden_states, temb,
image_rotary_emb, joint_attention_kwargs)` and returning `(encoder, hidden)`. As in HunyuanVideo both states are
stream; the final block is the last single-stream block. LoRA targets every linear layer of that block, as the
authors' FLUX trainer does. Guidance-distilled: one transformer call per step (branch `cond`).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from . import _small
from .spec import ModelSpec, RealSize, Recipe, ToyGlue

_REAL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))
_REAL_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 latent_channels=16, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=0.3611, shift_factor=0.1159)


def build_pipeline(config: dict, words=(), seed: int = 0, vae_config: dict | None = None,
                   scheduler_config: dict | None = None, text_layers: int = 2, transformer=None) -> FluxPipeline:
    """A `FluxPipeline` of the real classes (CLIP + T5 text encoders) with word-level tokenizers."""
    from ..toy.tokenizer import word_tokenizer

    tokenizer = word_tokenizer(words, model_max_length=77)  # CLIP reads the whole prompt, as in FLUX.1
    tokenizer_2 = word_tokenizer(words)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**(vae_config or dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=config["in_channels"] // 4, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)))
    clip = _small.clip(len(tokenizer), config["pooled_projection_dim"], config["pooled_projection_dim"], text_layers)
    t5 = _small.t5(len(tokenizer_2), config["joint_attention_dim"], text_layers)
    transformer = transformer if transformer is not None else FluxTransformer2DModel(**config)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**(scheduler_config or {})), vae=vae,
                        text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer_2,
                        transformer=transformer)


def latent_tokens(config, factors: tuple[int, int], height: int, width: int, frames: int = 1) -> int:
    """FluxPipeline packs 2x2 latent patches into one token."""
    scale = factors[0] * 2
    return (height // scale) * (width // scale)


def pixel_multiple(config, factors: tuple[int, int]) -> int:
    return factors[0] * 2


# --- toy trainer glue (each line mirrors FluxPipeline) --------------------------------------------------------
def _compression(pipe) -> tuple[int, int]:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1), 1


def _set_latent_stats(pipe, z: torch.Tensor) -> dict:
    """FluxPipeline decodes `z / scaling_factor + shift_factor`."""
    z = z.float()
    shift = float(z.mean())
    scaling = float(1.0 / (z - shift).std().clamp_min(1e-3))
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    return {"shift_factor": shift, "scaling_factor": scaling}


def _normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    return (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def _encode_text(pipe, prompts, max_sequence_length: int, prompt_template=None) -> dict:
    with torch.no_grad():
        emb, pooled, text_ids = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=max_sequence_length,
                                                   device=pipe.transformer.device)
    return {"emb": emb, "pooled": pooled, "text_ids": text_ids}


def _predict(pipe, noisy, sigma, cond, guidance):
    b, c, h, w = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
    transformer = pipe.transformer
    g = torch.full((b,), guidance, device=noisy.device, dtype=torch.float32) \
        if transformer.config.guidance_embeds else None
    out = transformer(hidden_states=packed, timestep=sigma, guidance=g, pooled_projections=cond["pooled"],
                      encoder_hidden_states=cond["emb"], txt_ids=cond["text_ids"], img_ids=img_ids,
                      return_dict=False)[0]
    out = out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)  # inverse of _pack_latents
    return out.reshape(b, c, h, w)


SPEC = ModelSpec(
    family="flux",
    transformer_class=FluxTransformer2DModel,
    pipeline_class="FluxPipeline",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    stream_names=("hidden_states", "encoder_hidden_states"),
    output_order=("encoder_hidden_states", "hidden_states"),
    lora_targets=("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"),
    output="image",
    recipe=Recipe(lr=1e-3, max_epochs=800),
    latent_tokens=latent_tokens,
    pixel_multiple=pixel_multiple,
    build_pipeline=build_pipeline,
    tiny_config=dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
    tiny_call=dict(height=16, width=16, guidance_scale=3.5, max_sequence_length=12),
    # xfuser's xFuserFluxTransformer2DWrapper is a PipeFusion composition wrapper, not a FluxTransformer2DModel;
    # xFuserFlux1Transformer2DWrapper is the subclass that keeps diffusers' block loop.
    xfuser_wrapper=("xfuser.model_executor.models.transformers.transformer_flux", "xFuserFlux1Transformer2DWrapper"),
    taylorseer_modules=(r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                        r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)"),
    attention_modules=(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.attn$",),
    real_sizes={
        "flux-dev": RealSize(_REAL, 1024, 1024, 1, 512, 3.5, factors=(8, 1), vae=_REAL_VAE),
        "tiny-flux": RealSize(dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8)),
                              32, 32, 1, 8, 3.5, factors=(8, 1),
                              vae=dict(_REAL_VAE, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                       latent_channels=4, norm_num_groups=4)),
    },
    toy=ToyGlue(_compression, _set_latent_stats, _normalise, _encode_text, _predict, train_sdpa=("flash", "math")),
)
