"""Per-family glue for training toy pipelines: pixels <-> normalised latents, prompts -> conditioning, and
the transformer call, each exactly as the family's diffusers pipeline does it at sampling time.

Training must see what sampling feeds the model, so every piece here mirrors a line of the pipeline:
- latents: `WanPipeline` decodes `z * latents_std + latents_mean` (per channel); `HunyuanVideoPipeline`
  decodes `z / scaling_factor`; `FluxPipeline` decodes `z / scaling_factor + shift_factor` (after unpacking
  2x2 patches). `set_latent_stats` writes the trained VAE's latent statistics into those config fields, so the
  transformer works on latents of zero mean and unit variance.
- conditioning: the pipeline's own `encode_prompt` (frozen text encoders), computed once per prompt.
- transformer call: keyword arguments and time scaling of the pipeline's denoising loop (Wan and
  HunyuanVideo get `timestep = 1000 sigma`, FLUX `sigma` and multiplies by 1000 inside; HunyuanVideo's
  guidance is `1000 g`, FLUX's `g`).
- noise levels: `FlowMatchEulerDiscreteScheduler` samples on a uniform grid mapped through
  `sigma = s u / (1 + (s - 1) u)` (s = `shift`, or `exp(mu)` with FLUX's resolution-dependent shift);
  `effective_shift` returns s, and training draws u uniformly and maps it the same way, so training spends
  its steps where sampling does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def family_of(pipe) -> str:
    name = type(pipe).__name__
    families = {"WanPipeline": "wan", "HunyuanVideoPipeline": "hunyuan_video", "FluxPipeline": "flux"}
    if name not in families:
        raise ValueError(f"{name} is not a toy pipeline class; expected one of {sorted(families)}")
    return families[name]


def is_video(pipe) -> bool:
    return family_of(pipe) != "flux"


def _latent_dist(pipe, pixels: torch.Tensor):
    """The VAE posterior of pixels in [-1, 1]: `(B, 3, F, H, W)` for video, `(B, 3, H, W)` for images."""
    return pipe.vae.encode(pixels).latent_dist


def compression(pipe) -> tuple[int, int]:
    """(spatial, temporal) compression factors of the pipeline's VAE (temporal 1 for images)."""
    vae, family = pipe.vae, family_of(pipe)
    if family == "wan":
        return int(vae.config.scale_factor_spatial), int(vae.config.scale_factor_temporal)
    if family == "hunyuan_video":
        return int(vae.config.spatial_compression_ratio), int(vae.config.temporal_compression_ratio)
    return 2 ** (len(vae.config.block_out_channels) - 1), 1


def anchor_target(pixels: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """A low-resolution view of pixels laid out like the latents: the anchor of the first latent channels.

    Images `(B, 3, H, W)`: average-pooled by `spatial` -> `(B, 3, h, w)`. Clips `(B, 3, F, H, W)` with
    F = 1 + temporal k: pooled in space, then each latent frame's frames (the first frame alone, repeated;
    then groups of `temporal` frames, as the causal video VAEs group them) stacked on channels ->
    `(B, 3 temporal, 1 + k, h, w)`.
    """
    if pixels.ndim == 4:
        return F.avg_pool2d(pixels, spatial)
    pooled = F.avg_pool3d(pixels, (1, spatial, spatial))
    b, c, f, h, w = pooled.shape
    first = pooled[:, :, :1].repeat(1, temporal, 1, 1, 1)
    rest = pooled[:, :, 1:].reshape(b, c, (f - 1) // temporal, temporal, h, w)
    rest = rest.permute(0, 3, 1, 2, 4, 5).reshape(b, temporal * c, (f - 1) // temporal, h, w)
    return torch.cat([first, rest], dim=2)


def vae_loss(pipe, pixels: torch.Tensor, kl_weight: float, anchor_weight: float = 1.0,
             foreground_weight: float = 4.0) -> tuple[torch.Tensor, dict]:
    """Autoencoder loss: weighted L1 + MSE of the posterior mean's reconstruction, latent anchor, small KL.

    - Pixels that differ from the top-left pixel (the background in every toy scene) weigh
      `1 + foreground_weight` (normalised to mean 1): the shape is a few percent of the frame but carries
      colour, kind and motion.
    - Anchor: the first latent channels are pulled (MSE x `anchor_weight`) toward `anchor_target`, the
      clip at the latent resolution. A latent must hold that information anyway; giving it a target from the
      first step lets encoder and decoder learn local maps instead of discovering a code, which trains
      several times faster (the Wan VAE reached RMSE 28/255 instead of 48 in 125 steps) and leaves latents
      that look like a small video, easy for the transformer. The other channels stay free for detail.
    - The mean is decoded (no posterior sample): it learns faster, and the pipelines only decode.
    """
    dist = _latent_dist(pipe, pixels)
    recon = pipe.vae.decode(dist.mean).sample.float()
    corner = pixels[..., :1, :1]
    weight = 1.0 + foreground_weight * ((pixels - corner).abs().amax(dim=1, keepdim=True) > 0.05).float()
    weight = weight / weight.mean()
    err = recon - pixels
    l1, mse = (weight * err.abs()).mean(), (weight * err.pow(2)).mean()
    kl = 0.5 * (dist.mean.float() ** 2 + dist.var.float() - 1.0 - dist.logvar.float()).mean()
    target = anchor_target(pixels, *compression(pipe))
    k = min(target.shape[1], dist.mean.shape[1])
    anchor = (dist.mean[:, :k].float() - target[:, :k]).pow(2).mean()
    loss = l1 + mse + kl_weight * kl + anchor_weight * anchor
    return loss, {"l1": l1.detach(), "mse": err.detach().pow(2).mean(), "kl": kl.detach(), "anchor": anchor.detach()}


def raw_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior means of pixels, before normalisation."""
    return _latent_dist(pipe, pixels).mean


def set_latent_stats(pipe, z: torch.Tensor) -> dict:
    """Write the statistics of raw latents `z` into the VAE config fields the pipeline decodes with."""
    family = family_of(pipe)
    z = z.float()
    if family == "wan":
        dims = [d for d in range(z.ndim) if d != 1]
        mean = z.mean(dim=dims).tolist()
        std = z.std(dim=dims).clamp_min(1e-3).tolist()
        pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
        return {"latents_mean": mean, "latents_std": std}
    if family == "hunyuan_video":
        scaling = float(1.0 / z.std().clamp_min(1e-3))  # no shift field: decode is z / scaling_factor
        pipe.vae.register_to_config(scaling_factor=scaling)
        return {"scaling_factor": scaling}
    shift = float(z.mean())
    scaling = float(1.0 / (z - shift).std().clamp_min(1e-3))
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    return {"shift_factor": shift, "scaling_factor": scaling}


def normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    """Raw latents -> the space the transformer samples in (inverse of the pipeline's decode scaling)."""
    family, cfg = family_of(pipe), pipe.vae.config
    if family == "wan":
        shape = (1, -1) + (1,) * (z.ndim - 2)
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(shape)
        return (z - mean) / std
    if family == "hunyuan_video":
        return z * cfg.scaling_factor
    return (z - cfg.shift_factor) * cfg.scaling_factor


def encode_text(pipe, prompts: list[str], max_sequence_length: int, prompt_template=None) -> dict:
    """Per-prompt conditioning tensors (batch first), from the pipeline's own `encode_prompt`."""
    family = family_of(pipe)
    device = pipe.transformer.device
    with torch.no_grad():
        if family == "wan":
            emb, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                        max_sequence_length=max_sequence_length, device=device)
            return {"emb": emb}
        if family == "hunyuan_video":
            emb, pooled, mask = pipe.encode_prompt(prompts, prompt_template=prompt_template,
                                                   max_sequence_length=max_sequence_length, device=device)
            return {"emb": emb, "pooled": pooled, "mask": mask}
        emb, pooled, text_ids = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=max_sequence_length,
                                                   device=device)
        return {"emb": emb, "pooled": pooled, "text_ids": text_ids}


def index_cond(cond: dict, idx: torch.Tensor) -> dict:
    """Rows `idx` of every batch-first tensor (FLUX's shared `text_ids` are kept whole)."""
    return {k: (v if k == "text_ids" else v[idx]) for k, v in cond.items()}


def effective_shift(pipe, latent_shape: tuple[int, ...]) -> float:
    """The shift s of the pipeline's sigma schedule for latents of `latent_shape` (unpacked, with batch)."""
    cfg = pipe.scheduler.config
    if not cfg.get("use_dynamic_shifting", False):
        return float(cfg.shift)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    seq_len = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
    mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    if cfg.get("time_shift_type", "exponential") != "exponential":
        raise ValueError(f"time_shift_type={cfg.get('time_shift_type')!r}: only 'exponential' is supported")
    return math.exp(mu)


def sample_sigmas(n: int, shift: float, generator: torch.Generator, device) -> torch.Tensor:
    """Noise levels in (0, 1], as dense as the shifted sampling grid: u ~ U(0, 1), s u / (1 + (s - 1) u)."""
    u = torch.rand(n, generator=generator, device=generator.device).to(device).clamp(1e-4, 1.0)
    return shift * u / (1.0 + (shift - 1.0) * u)


def predict(pipe, noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, guidance: float) -> torch.Tensor:
    """The transformer's velocity for unpacked latents `noisy` at noise levels `sigma` (shape `(B,)`)."""
    family, transformer = family_of(pipe), pipe.transformer
    b = noisy.shape[0]
    if family == "wan":
        return transformer(hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=cond["emb"],
                           return_dict=False)[0]
    if family == "hunyuan_video":
        g = torch.full((b,), guidance * 1000.0, device=noisy.device, dtype=noisy.dtype)
        return transformer(hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=cond["emb"],
                           encoder_attention_mask=cond["mask"], pooled_projections=cond["pooled"], guidance=g,
                           return_dict=False)[0]
    from diffusers import FluxPipeline

    c, h, w = noisy.shape[1:]
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
    g = torch.full((b,), guidance, device=noisy.device, dtype=torch.float32) \
        if transformer.config.guidance_embeds else None
    out = transformer(hidden_states=packed, timestep=sigma, guidance=g, pooled_projections=cond["pooled"],
                      encoder_hidden_states=cond["emb"], txt_ids=cond["text_ids"], img_ids=img_ids,
                      return_dict=False)[0]
    # unpack (B, hw/4, 4c) -> (B, c, h, w), the inverse of _pack_latents
    out = out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(b, c, h, w)


def flow_loss(pipe, x0: torch.Tensor, cond: dict, shift: float, guidance: float,
              generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss: x_t = (1 - sigma) x0 + sigma noise, target noise - x0 (what Euler steps integrate)."""
    b = x0.shape[0]
    sigma = sample_sigmas(b, shift, generator, x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    s = sigma.view((b,) + (1,) * (x0.ndim - 1))
    noisy = (1.0 - s) * x0 + s * noise
    pred = predict(pipe, noisy, sigma, cond, guidance)
    return (pred.float() - (noise - x0).float()).pow(2).mean()
