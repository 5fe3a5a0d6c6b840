"""Flow-matching training of toy pipelines, exactly as the family's diffusers pipeline samples.

Training must see what sampling feeds the model. The family-specific pieces (latent normalisation, prompt
encoding, the transformer call with its time and guidance scaling) live in each model spec's `toy` glue
(`lbdist/models/<family>.py`); this module dispatches to them and holds what all families share:
- the VAE loss of the toy autoencoders (`vae_loss`, with the latent anchor `anchor_target`);
- noise levels: `FlowMatchEulerDiscreteScheduler` samples on a uniform grid mapped through
  `sigma = s u / (1 + (s - 1) u)` (s = `shift`, or `exp(mu)` with FLUX's resolution-dependent shift);
  `effective_shift` returns s, and training draws u uniformly and maps it the same way, so training spends
  its steps where sampling does;
- the rectified-flow loss (`flow_loss`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models import spec_for_pipeline


def family_of(pipe) -> str:
    return spec_for_pipeline(pipe).family


def _glue(pipe):
    spec = spec_for_pipeline(pipe)
    if spec.toy is None:
        raise ValueError(f"the {spec.family} model spec has no toy glue (ModelSpec.toy): it cannot be trained as a toy")
    return spec.toy


def is_video(pipe) -> bool:
    return spec_for_pipeline(pipe).is_video


def _latent_dist(pipe, pixels: torch.Tensor):
    """The VAE posterior of pixels in [-1, 1]: `(B, 3, F, H, W)` for video, `(B, 3, H, W)` for images."""
    return pipe.vae.encode(pixels).latent_dist


def compression(pipe) -> tuple[int, int]:
    """(spatial, temporal) compression factors of the pipeline's VAE (temporal 1 for images)."""
    return _glue(pipe).compression(pipe)


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
    return _glue(pipe).set_latent_stats(pipe, z)


def normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    """Raw latents -> the space the transformer samples in (inverse of the pipeline's decode scaling)."""
    return _glue(pipe).normalise(pipe, z)


def encode_text(pipe, prompts: list[str], max_sequence_length: int, prompt_template=None) -> dict:
    """Per-prompt conditioning tensors (batch first), from the pipeline's own `encode_prompt`."""
    return _glue(pipe).encode_text(pipe, prompts, max_sequence_length, prompt_template)


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
    return _glue(pipe).predict(pipe, noisy, sigma, cond, guidance)


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
