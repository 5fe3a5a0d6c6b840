"""Fidelity metrics against full compute: PSNR and SSIM of decoded frames, relative L2 of final latents,
and the piecewise-linear interpolation that compares methods at equal speedup.

Frames are float arrays `(F, H, W, 3)` (or `(H, W, 3)`) in [0, 1], as `GenerationResult.frames` holds them; PSNR
and SSIM use a data range of 1. SSIM is the standard one (Wang et al. 2004): an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, valid positions only, computed per channel and frame and averaged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _frames(x) -> torch.Tensor:
    """A float64 tensor `(N, C, H, W)` from `(F, H, W, C)` / `(H, W, C)` arrays or tensors."""
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float64)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"frames must be (F, H, W, C) or (H, W, C), got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def psnr(frames, reference, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all frames; `inf` for identical inputs."""
    a, b = _frames(frames), _frames(reference)
    _check_pair(a, b)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(frames, reference, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity over frames and channels (1.0 for identical inputs)."""
    a, b = _frames(frames), _frames(reference)
    _check_pair(a, b)
    if a.shape[-1] < window or a.shape[-2] < window:
        raise ValueError(f"frames of {a.shape[-2]}x{a.shape[-1]} px are smaller than the {window}x{window} SSIM window")
    n, c, h, w = a.shape
    a, b = a.reshape(n * c, 1, h, w), b.reshape(n * c, 1, h, w)
    kernel = _gaussian_window(window, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, kernel), F.conv2d(b, kernel)
    var_a = F.conv2d(a * a, kernel) - mu_a ** 2
    var_b = F.conv2d(b * b, kernel) - mu_b ** 2
    cov = F.conv2d(a * b, kernel) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """`||x - reference|| / ||reference||` (e.g. of the final latents)."""
    if x.shape != reference.shape:
        raise ValueError(f"tensors differ in shape: {tuple(x.shape)} vs {tuple(reference.shape)}")
    x, reference = x.double(), reference.double()
    return float((x - reference).norm() / reference.norm())


def interpolate_curve(speedups, values, targets) -> list[float | None]:
    """A method's metric at each target speedup, linear between measured points; None outside their range.

    Points with the same speedup are averaged first. A target equal to a measured speedup returns its value.
    """
    speedups, values = np.asarray(speedups, dtype=float), np.asarray(values, dtype=float)
    if speedups.shape != values.shape or speedups.ndim != 1:
        raise ValueError(f"need as many speedups as values, got {speedups.shape} and {values.shape}")
    keep = np.isfinite(speedups) & np.isfinite(values)
    speedups, values = speedups[keep], values[keep]
    if not len(speedups):
        return [None for _ in targets]
    xs = np.unique(speedups)
    ys = np.asarray([values[speedups == x].mean() for x in xs])
    out = []
    for t in targets:
        inside = xs[0] - 1e-9 <= t <= xs[-1] + 1e-9
        out.append(float(np.interp(t, xs, ys)) if inside else None)
    return out
