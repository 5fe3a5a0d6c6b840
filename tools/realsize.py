"""Real-size transformer configs with random weights, and the inputs one denoising step feeds them.

Used by the GPU benchmarks in tools/: compute does not depend on weight values, so random weights built
directly on the GPU in bf16 time the same as the released checkpoints. Shapes follow the released models:
VAE compression 8x in space and 4x in time (`frames -> (frames - 1) / 4 + 1`), FLUX packs 2x2 latents.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CONFIGS = {
    "wan-1.3b": ("wan", dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                             out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                             cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)),
    "wan-14b": ("wan", dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)),
    "hunyuan-video": ("hunyuan_video", dict(in_channels=16, out_channels=16, num_attention_heads=24,
                                            attention_head_dim=128, num_layers=20, num_single_layers=40,
                                            num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                                            qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096,
                                            pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56))),
    "flux-dev": ("flux", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                              num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                              guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
    # CPU smoke-test stand-ins (`--quick` in the benchmarks): same code path, tiny sizes
    "tiny-wan": ("wan", dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16,
                             out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=3, cross_attn_norm=True,
                             qk_norm="rms_norm_across_heads", rope_max_seq_len=32)),
    "tiny-hunyuan-video": ("hunyuan_video", dict(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=10, num_layers=2, num_single_layers=2,
                                                 num_refiner_layers=1, patch_size=1, patch_size_t=1,
                                                 guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
                                                 rope_axes_dim=(2, 4, 4))),
    "tiny-flux": ("flux", dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                               guidance_embeds=True, axes_dims_rope=(4, 4, 8))),
}
# Issue 6's sizes: the same transformers at 720x1280 (xDiT's HunyuanVideo reference size; SHAPES below)
CONFIGS["wan-14b-720p"] = ("wan", dict(CONFIGS["wan-14b"][1]))
CONFIGS["hunyuan-video-720p"] = ("hunyuan_video", dict(CONFIGS["hunyuan-video"][1]))


@dataclass(frozen=True)
class Shape:
    """Output size of a generation: height, width (pixels), frames (1 for images), text tokens."""

    height: int
    width: int
    frames: int = 1
    text_tokens: int = 512

    def label(self) -> str:  # noqa: D102
        return f"{self.height}x{self.width}" + (f"x{self.frames}" if self.frames > 1 else "")


def build(name: str, device="cuda", dtype=torch.bfloat16):
    """The transformer of a named config with random weights, built directly on `device` in `dtype`."""
    from diffusers import FluxTransformer2DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel

    family, config = CONFIGS[name]
    cls = {"wan": WanTransformer3DModel, "hunyuan_video": HunyuanVideoTransformer3DModel,
           "flux": FluxTransformer2DModel}[family]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def latent_tokens(name: str, shape: Shape) -> int:
    family, config = CONFIGS[name]
    h, w = shape.height // 8, shape.width // 8
    if family == "flux":
        return (h // 2) * (w // 2)
    f = (shape.frames - 1) // 4 + 1
    p = config["patch_size"]
    pt, ph, pw = p if isinstance(p, tuple) else (config.get("patch_size_t", 1), p, p)
    return (f // pt) * (h // ph) * (w // pw)


def token_arithmetic(name: str, shape: Shape) -> str:
    """How `latent_tokens` counts, written out: '720x1280x129 -> latent 33x90x160 / patch 1x2x2 = 33*45*80 = 118800'."""
    family, config = CONFIGS[name]
    h, w = shape.height // 8, shape.width // 8
    if family == "flux":
        return f"{shape.label()} -> latent {h}x{w} / pack 2x2 = {h // 2}*{w // 2} = {latent_tokens(name, shape)}"
    f = (shape.frames - 1) // 4 + 1
    p = config["patch_size"]
    pt, ph, pw = p if isinstance(p, tuple) else (config.get("patch_size_t", 1), p, p)
    return (f"{shape.label()} -> latent {f}x{h}x{w} (VAE 4x in time, 8x in space) / patch {pt}x{ph}x{pw} = "
            f"{f // pt}*{h // ph}*{w // pw} = {latent_tokens(name, shape)}")


def check_split(name: str, shape: Shape, degree: int) -> str:
    """Raise ValueError, with the arithmetic, unless `name` at `shape` splits evenly over Ulysses degree `degree`
    (heads % degree == 0 and latent tokens % degree == 0); return the arithmetic when it does."""
    family, config = CONFIGS[name]
    heads, tokens = int(config["num_attention_heads"]), latent_tokens(name, shape)
    arithmetic = (f"{name}: {token_arithmetic(name, shape)} tokens, {tokens} % {degree} = {tokens % degree}; "
                  f"{heads} heads % {degree} = {heads % degree}")
    if tokens % degree or heads % degree or tokens < degree:
        raise ValueError(f"{arithmetic}: cannot split over sequence-parallel degree {degree} (Ulysses splits heads "
                         "across ranks and every rank needs an equal share of the tokens)")
    return arithmetic


def step_inputs(name: str, shape: Shape, device="cuda", dtype=torch.bfloat16, seed: int = 0):
    """(latents, make_kwargs): `make_kwargs(latents, sigma)` gives the transformer's keyword arguments for one
    step at noise level `sigma` in [0, 1], as the diffusers pipeline would pass them."""
    family, config = CONFIGS[name]
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size):
        return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

    h, w = shape.height // 8, shape.width // 8
    if family == "wan":
        latents = rand(1, config["in_channels"], (shape.frames - 1) // 4 + 1, h, w)
        text = rand(1, shape.text_tokens, config["text_dim"])
        return latents, lambda x, sigma: dict(hidden_states=x, encoder_hidden_states=text, return_dict=False,
                                               timestep=torch.full((1,), sigma * 1000.0, device=device))
    if family == "hunyuan_video":
        latents = rand(1, config["in_channels"], (shape.frames - 1) // 4 + 1, h, w)
        text = rand(1, shape.text_tokens, config["text_embed_dim"])
        mask = torch.ones(1, shape.text_tokens, device=device, dtype=torch.long)
        pooled = rand(1, config["pooled_projection_dim"])
        guidance = torch.full((1,), 6.0 * 1000.0, device=device, dtype=dtype)
        return latents, lambda x, sigma: dict(hidden_states=x, encoder_hidden_states=text, encoder_attention_mask=mask,
                                               pooled_projections=pooled, guidance=guidance, return_dict=False,
                                               timestep=torch.full((1,), sigma * 1000.0, device=device, dtype=dtype))
    latents = rand(1, (h // 2) * (w // 2), config["in_channels"])
    text = rand(1, shape.text_tokens, config["joint_attention_dim"])
    pooled = rand(1, config["pooled_projection_dim"])
    img_ids = torch.zeros(h // 2, w // 2, 3, device=device)
    img_ids[..., 1] += torch.arange(h // 2, device=device)[:, None]
    img_ids[..., 2] += torch.arange(w // 2, device=device)[None, :]
    img_ids = img_ids.reshape(-1, 3)
    txt_ids = torch.zeros(shape.text_tokens, 3, device=device)
    guidance = torch.full((1,), 3.5, device=device, dtype=torch.float32)
    return latents, lambda x, sigma: dict(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                                           img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False,
                                           timestep=torch.full((1,), sigma, device=device, dtype=dtype))


def sigmas(steps: int, shift: float = 5.0) -> list[float]:
    """Flow-matching noise levels for `steps` Euler steps (with the usual time shift), ending at 0."""
    out = []
    for i in range(steps + 1):
        s = 1.0 - i / steps
        out.append(shift * s / (1 + (shift - 1) * s))
    return out


# The shapes each benchmark uses by default (the issues' reference sizes), and tiny ones for --quick.
SHAPES = {"wan-14b": Shape(480, 832, 81, 512), "wan-1.3b": Shape(480, 832, 81, 512),
          "hunyuan-video": Shape(480, 832, 65, 256), "flux-dev": Shape(1024, 1024, 1, 512),
          "wan-14b-720p": Shape(720, 1280, 81, 512), "hunyuan-video-720p": Shape(720, 1280, 129, 256),
          "tiny-wan": Shape(32, 32, 5, 8), "tiny-hunyuan-video": Shape(32, 32, 5, 8), "tiny-flux": Shape(32, 32, 1, 8)}
QUICK = ["tiny-wan", "tiny-hunyuan-video", "tiny-flux"]


def bench_pipeline(name: str, device="cuda", dtype=torch.bfloat16):
    """A real diffusers pipeline around the real-size transformer, with small random text encoders (of the
    transformer's text width) and a small VAE: it runs `pipe(prompt=...)` end to end, so pipeline-level
    code (the calibration recorder, the bridge hooks, guidance) is exercised at real sequence lengths."""
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from diffusers import HunyuanVideoPipeline, WanPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, T5Config, T5EncoderModel

    from lbdist.toy.tokenizer import word_tokenizer

    family, config = CONFIGS[name]
    words = "a red circle moves left blue square up green triangle right yellow down".split()
    tok = word_tokenizer(words, model_max_length=512)
    transformer = build(name, device=device, dtype=dtype)
    torch.manual_seed(0)
    if family == "wan":
        text = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=config["text_dim"], d_kv=64, d_ff=256,
                                       num_layers=1, num_heads=8, relative_attention_num_buckets=8))
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
        pipe = WanPipeline(tokenizer=tok, text_encoder=text, transformer=transformer, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    elif family == "hunyuan_video":
        llama = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=config["text_embed_dim"], intermediate_size=256,
                                       num_attention_heads=8, num_key_value_heads=8, num_hidden_layers=3))
        clip_tok = word_tokenizer(words, model_max_length=77)
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=config["pooled_projection_dim"],
                                            intermediate_size=256, num_attention_heads=8, num_hidden_layers=1,
                                            projection_dim=config["pooled_projection_dim"], eos_token_id=1))
        vae = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                        norm_num_groups=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                        up_block_types=("HunyuanVideoUpBlock3D",) * 4)
        pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=tok, transformer=transformer, vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                    tokenizer_2=clip_tok)
    else:
        raise ValueError(f"bench_pipeline supports the video families, not {family!r}")
    for module in (pipe.text_encoder, pipe.vae, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.to(device=device, dtype=dtype).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Pipeline call arguments of each real-size shape (for bench_pipeline pipelines).
def call_kwargs(name: str, shape: Shape) -> dict:
    family = CONFIGS[name][0]
    kw = dict(height=shape.height, width=shape.width, num_frames=shape.frames, max_sequence_length=shape.text_tokens)
    if family == "wan":
        kw.update(guidance_scale=5.0)
    elif family == "hunyuan_video":
        kw.update(guidance_scale=6.0, prompt_template={"template": "{}", "crop_start": 0})
    return kw
