"""Model spec for HunyuanVideo (`HunyuanVideoTransformer3DModel`): double-stream then single-stream blocks.

Both block kinds take `(hidden_states, encoder_hidden_states, temb, attention_mask, image_rotary_emb,
token_replace_emb, first_frame_num_tokens)` positionally and return `(hidden, encoder)`. Text tokens are
transformed block by block here, so both states are stream (cached); `temb`, the mask and RoPE are the
step's conditioning. The final block is the last single-stream block.
"""
from diffusers import HunyuanVideoTransformer3DModel

from .spec import ModelSpec

HUNYUAN_VIDEO = ModelSpec(
    family="hunyuan_video",
    transformer_class=HunyuanVideoTransformer3DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    stream_names=("hidden_states", "encoder_hidden_states"),
    output_order=("hidden_states", "encoder_hidden_states"),
    lora_targets=("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"),
    pipeline_class="HunyuanVideoPipeline",
)
