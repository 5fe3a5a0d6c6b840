"""Rendering of v2 scenes (`dataset_v2.py`) as batched torch operations, on the CPU or the training GPU.

`render_v2(scenes, config, device)` is the one implementation: `dataset.render` / `render_batch` call it
on the CPU, the trainer on its GPU (thousands of clips per call, no Python loop over pixels). Each scene's
pixels depend on that scene alone (the noise texture comes from an integer hash of the scene's seed and the
cell, not from a shared generator), so a render never depends on its batch.

Objects are hard-edged masks with the same formulas as v1 (`dataset.shape_mask`): circle of the size
radius, square of half-side 0.85 r, upward triangle of circumradius 1.3 r centred on its centroid. Object
paths (constant velocity, growth, bounce) come from `dataset_v2.object_track`, the one place they are
defined. The background is `clip(colour + amplitude * pattern)` with a grey-level pattern in [-1, 1].
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import BACKGROUNDS, COLOURS, SHAPES, SQUARE_HALF, TRIANGLE_R
from .dataset_v2 import TEXTURES, object_track, texture_period

MAX_OBJECTS = 2
_MASK32 = 0xFFFFFFFF


def pack_scenes(scenes, config) -> dict[str, np.ndarray]:
    """Scene fields as arrays: per scene background and texture, per object (padded to 2) its path."""
    n = len(scenes)
    frames = config.num_frames if scenes[0].kind == "video" else 1
    out = {"centres": np.zeros((n, MAX_OBJECTS, frames, 2)), "radii": np.zeros((n, MAX_OBJECTS, frames)),
           "shape": np.zeros((n, MAX_OBJECTS), np.int64), "colour": np.zeros((n, MAX_OBJECTS, 3)),
           "present": np.zeros((n, MAX_OBJECTS), bool), "background": np.zeros((n, 3)),
           "texture": np.zeros(n, np.int64), "orientation": np.zeros(n, np.int64), "phase": np.zeros((n, 2)),
           "angle": np.zeros(n), "seed": np.zeros(n, np.int64)}
    for i, scene in enumerate(scenes):
        if scene.kind != scenes[0].kind:
            raise ValueError(f"scene {i} is a {scene.kind}, scene 0 a {scenes[0].kind}: render one kind at a time")
        out["background"][i] = BACKGROUNDS[scene.background]
        out["texture"][i] = TEXTURES.index(scene.texture)
        out["orientation"][i], out["phase"][i] = scene.texture_orientation, scene.texture_phase
        out["angle"][i], out["seed"][i] = scene.texture_angle, scene.texture_seed
        for k, obj in enumerate(scene.objects):
            out["centres"][i, k], out["radii"][i, k] = object_track(obj, scene.kind, config)
            out["shape"][i, k], out["colour"][i, k] = SHAPES.index(obj.shape), COLOURS[obj.colour]
            out["present"][i, k] = True
    return out


def _hash_uniform(seed: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A uniform value in [-1, 1) per (seed, a, b): integer mixing in int64, exact on every device."""
    h = (seed * 0x27D4EB2F + a * 0x165667B1 + b * 0x61C88647) & _MASK32
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & _MASK32
    h = ((h ^ (h >> 12)) * 0x297A2D39) & _MASK32
    h = h ^ (h >> 15)
    return h.to(torch.float32) * (2.0 / 2.0 ** 32) - 1.0


def _square_wave(coord: torch.Tensor, half: float) -> torch.Tensor:
    return 1.0 - 2.0 * torch.remainder(torch.floor(coord / half), 2.0)


def texture_pattern(p: dict, config, device) -> torch.Tensor:
    """Grey-level patterns `(N, H, W)` in [-1, 1] of the packed scenes (0 for plain backgrounds)."""
    h, w, period = config.height, config.width, texture_period(config)
    ys = torch.arange(h, device=device, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, None, :] + 0.5
    phase = torch.as_tensor(p["phase"], device=device, dtype=torch.float32)
    px, py = phase[:, 0, None, None], phase[:, 1, None, None]
    horizontal = torch.as_tensor(p["orientation"], device=device)[:, None, None] == 0
    striped = torch.where(horizontal, _square_wave(ys + py, period / 2), _square_wave(xs + px, period / 2))
    checkered = _square_wave(xs + px, period / 2) * _square_wave(ys + py, period / 2)
    cell = period // 4
    seed = torch.as_tensor(p["seed"], device=device)[:, None, None]
    noisy = _hash_uniform(seed, torch.floor(xs / cell).long(), torch.floor(ys / cell).long())
    angle = torch.as_tensor(p["angle"], device=device, dtype=torch.float32)[:, None, None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    gradient = ((xs - w / 2) * cos + (ys - h / 2) * sin) / (w / 2 * cos.abs() + h / 2 * sin.abs())
    patterns = torch.stack([torch.zeros_like(gradient.expand_as(striped)), striped, checkered.expand_as(striped),
                            noisy.expand_as(striped), gradient.expand_as(striped)])
    texture = torch.as_tensor(p["texture"], device=device)
    return patterns.gather(0, texture[None, :, None, None].expand(1, *striped.shape))[0]


def shape_masks(shape: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Boolean masks `(N, F, H, W)` of shapes `(N,)` (indices of `SHAPES`) at centres `(N, F, 2)`, radii `(N, F)`."""
    device = centres.device
    ys = torch.arange(h, device=device, dtype=centres.dtype)[None, None, :, None] + 0.5
    xs = torch.arange(w, device=device, dtype=centres.dtype)[None, None, None, :] + 0.5
    dx, dy = xs - centres[..., 0, None, None], ys - centres[..., 1, None, None]
    r = radii[..., None, None]
    circle = dx * dx + dy * dy <= r * r
    half = SQUARE_HALF * r
    square = (dx.abs() <= half) & (dy.abs() <= half)
    big, s = TRIANGLE_R * r, np.sqrt(3.0) / 2.0
    triangle = (dy <= big / 2) & (s * dx + 0.5 * dy >= -big / 2) & (-s * dx + 0.5 * dy >= -big / 2)
    kind = shape[:, None, None, None]
    return torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))


def _render_packed(p: dict, config, device) -> torch.Tensor:
    f32 = dict(device=device, dtype=torch.float32)
    pattern = texture_pattern(p, config, device)
    background = torch.as_tensor(p["background"], **f32)[:, None, None, :]
    img = (background + config.texture_amplitude * pattern[..., None]).clamp(0.0, 255.0)
    frames = p["centres"].shape[2]
    img = img[:, None].expand(-1, frames, -1, -1, -1)
    centres, radii = torch.as_tensor(p["centres"], **f32), torch.as_tensor(p["radii"], **f32)
    shape, present = torch.as_tensor(p["shape"], device=device), torch.as_tensor(p["present"], device=device)
    colour = torch.as_tensor(p["colour"], **f32)
    for k in range(MAX_OBJECTS):
        mask = shape_masks(shape[:, k], centres[:, k], radii[:, k], config.height, config.width)
        mask = mask & present[:, k, None, None, None]
        img = torch.where(mask[..., None], colour[:, k, None, None, None, :], img)
    return img.round().to(torch.uint8)


def render_v2(scenes, config, device="cpu", chunk: int = 256) -> torch.Tensor:
    """uint8 renders on `device`: `(N, F, H, W, 3)` for clips, `(N, H, W, 3)` for stills."""
    if not scenes:
        raise ValueError("render_v2 needs at least one scene")
    if config.version != "v2":
        raise ValueError(f"config.version={config.version!r}: render_v2 renders v2 scenes with a v2 DataConfig")
    parts = []
    for start in range(0, len(scenes), chunk):
        parts.append(_render_packed(pack_scenes(scenes[start:start + chunk], config), config, device))
    out = torch.cat(parts)
    return out if scenes[0].kind == "video" else out[:, 0]
