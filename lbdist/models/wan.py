"""Model spec for Wan2.1 / Wan2.2 (`WanTransformer3DModel`): one list of blocks returning a bare tensor.

`WanTransformerBlock.forward(hidden_states, encoder_hidden_states, temb, rotary_emb)`: only the video
tokens flow from block to block; the text states enter every block through cross-attention, so they are
conditioning (each guidance branch has its own, and the bridge uses the current step's).
"""
from diffusers import WanTransformer3DModel

from .spec import ModelSpec

_ATTN = ("to_q", "to_k", "to_v", "to_out.0")

WAN = ModelSpec(
    family="wan",
    transformer_class=WanTransformer3DModel,
    block_lists=("blocks",),
    stream_names=("hidden_states",),
    output_order=("hidden_states",),
    lora_targets=tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in _ATTN) + ("ffn.net.0.proj", "ffn.net.2"),
    pipeline_class="WanPipeline",
    default_branches=("cond", "uncond"),
)
