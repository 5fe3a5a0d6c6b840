"""Generate with a toy pipeline, score prompt adherence, and draw contact sheets of the samples.

    samples = generate(pipe, prompts, defaults, seed=0)          # uint8 (F, H, W, 3) or (H, W, 3) each
    report = evaluate(pipe, evaluation_prompts("video"), defaults, seeds=(0, 1))
    contact_sheet(report["samples"], report["captions"], "sheet.png")

Each sample's noise comes from its own CPU generator seeded by (seed, index), so a sample does not depend on
the batch it was generated in or on the device.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write, to_uint8_frames
from .flow import is_video
from .metric import adherence


def generate(pipe, prompts: list[str], defaults: dict, seed: int = 0, batch_size: int = 32,
             **overrides) -> list[np.ndarray]:
    """uint8 samples for `prompts` with the call arguments `defaults` (plus `overrides`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    kwargs = {**defaults, **overrides}
    if not is_video(pipe):
        kwargs.pop("num_frames", None)
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        with torch.no_grad():
            result = pipe(prompt=chunk, generator=gens, output_type="np", **kwargs)
        arrays = result.frames if is_video(pipe) else result.images
        for arr in arrays:
            frames = to_uint8_frames(np.asarray(arr))
            out.append(frames if is_video(pipe) else frames[0])
    return out


def evaluate(pipe, prompts: list[str], defaults: dict, seeds=(0,), batch_size: int = 32, **overrides) -> dict:
    """Mean adherence of samples for every prompt and seed, with per-sample results and the samples."""
    samples, captions, rows = [], [], []
    for seed in seeds:
        for prompt, sample in zip(prompts, generate(pipe, prompts, defaults, seed, batch_size, **overrides)):
            result = adherence(sample, prompt)
            samples.append(sample)
            captions.append(f"{result.score:.2f} {prompt}")
            rows.append({"prompt": prompt, "seed": seed, "score": result.score, "found": result.found,
                         "matches": result.matches, "attributes": result.attribute_scores})
    scores = [r["score"] for r in rows]
    per_attribute: dict[str, list[float]] = {}  # v2: per-object results (colour.1, colour.2) count as one
    for r in rows:
        for key, value in r["attributes"].items():
            per_attribute.setdefault(key, []).append(value)
    return {"adherence": float(np.mean(scores)), "n": len(rows),
            "per_attribute": {k: float(np.mean(v)) for k, v in per_attribute.items()},
            "rows": rows, "samples": samples, "captions": captions}


def _caption_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def contact_sheet(samples, captions, path: str | os.PathLike, columns: int = 4, frames_shown: int = 3,
                  scale: int = 2) -> Path:
    """A PNG grid: per sample, `frames_shown` evenly spaced frames side by side and its caption beneath."""
    from PIL import Image, ImageDraw

    if len(samples) != len(captions) or not samples:
        raise ValueError(f"need as many captions as samples (>= 1), got {len(captions)} and {len(samples)}")
    if columns < 1 or frames_shown < 1 or scale < 1:
        raise ValueError(f"columns={columns}, frames_shown={frames_shown}, scale={scale}: each must be >= 1")
    tiles = []
    for sample in samples:
        frames = to_uint8_frames(sample)
        idx = np.linspace(0, len(frames) - 1, min(frames_shown, len(frames))).round().astype(int)
        strip = np.concatenate([np.pad(frames[i], ((0, 0), (0, 2), (0, 0)), constant_values=255) for i in idx], 1)
        tiles.append(Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale),
                                                   Image.NEAREST))
    columns = min(columns, len(tiles))
    tile_w = max(t.width for t in tiles)
    font_size, lines = 10, 3
    cell_w, cell_h = max(tile_w, 200) + 8, tiles[0].height + lines * (font_size + 2) + 10
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw, font = ImageDraw.Draw(sheet), _caption_font(font_size)
    chars = max(cell_w // 6, 10)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 4
        sheet.paste(tile, (x, y))
        wrapped = [caption[j:j + chars] for j in range(0, len(caption), chars)][:lines]
        for k, line in enumerate(wrapped):
            draw.text((x, y + tile.height + 2 + k * (font_size + 2)), line, fill=(0, 0, 0), font=font)
    path = atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    os.chmod(path, 0o644)
    return path
