"""Small text encoders of the real transformers classes, shared by the family builders of small pipelines.

The test fixtures and the bundled toy models use the families' real text-encoder classes (T5, CLIP, Llama) at
small sizes with a word-level tokenizer (`lbdist.toy.tokenizer`); these helpers build them with random weights.
"""
from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, T5Config, T5EncoderModel

from ..toy.tokenizer import BOS_ID, EOS_ID, PAD_ID


def t5(vocab_size: int, d_model: int, layers: int = 2) -> T5EncoderModel:
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=max(d_model // 4, 4), d_ff=2 * d_model,
                      num_layers=layers, num_heads=4, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                      decoder_start_token_id=PAD_ID, relative_attention_num_buckets=8)
    return T5EncoderModel(config)


def clip(vocab_size: int, hidden: int, projection: int, layers: int = 2) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_attention_heads=4, num_hidden_layers=layers, projection_dim=projection,
                            max_position_embeddings=77, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                            bos_token_id=BOS_ID, hidden_act="gelu")
    return CLIPTextModel(config)


def llama(vocab_size: int, hidden: int, layers: int) -> LlamaModel:
    return LlamaModel(LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=layers,
                                  pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID))
