"""Model spec for FLUX.1 (`FluxTransformer2DModel`): double-stream then single-stream blocks.

Both block kinds are called by keyword `(hidden_states, encoder_hidden_states, temb, image_rotary_emb,
joint_attention_kwargs)` and return `(encoder, hidden)`. As in HunyuanVideo both states are stream; the
final block is the last single-stream block. LoRA targets every linear layer of that block, as the
authors' FLUX trainer does.
"""
from diffusers import FluxTransformer2DModel

from .spec import ModelSpec

FLUX = ModelSpec(
    family="flux",
    transformer_class=FluxTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    stream_names=("hidden_states", "encoder_hidden_states"),
    output_order=("encoder_hidden_states", "hidden_states"),
    lora_targets=("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"),
    pipeline_class="FluxPipeline",
)
