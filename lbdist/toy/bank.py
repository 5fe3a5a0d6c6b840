"""Training data of the chunked toy trainer, rendered and encoded on the training device, then reused.

- `PixelBank`: uint8 v2 renders on the device (`render_v2`), for the VAE phase; batches are drawn from it on
  the device and a slice is re-rendered now and then.
- `LatentBank`: what the transformer phase trains on: each slot's normalised VAE latent (encoded once, when
  the slot is filled) and its prompt's conditioning rows (the frozen text encoders run once per slot), all on
  the device. `sample` draws a batch with device-side indices (no host synchronisation); `refresh` replaces
  random slots with fresh scenes, so the model keeps seeing new geometry at the cost of a few encodes.

Scenes come from `SceneStream`: calls of `sample_scenes(.., "train", seed=(seed, draw))`, so the data of a run
is the same for a seed, and each chunk (its own stream seed) sees new scenes. Only training combinations are
ever drawn (`dataset_v2.is_heldout`).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from . import flow
from .dataset import sample_scenes
from .render_v2 import render_v2


class SceneStream:
    """Deterministic stream of training scenes: draw `i` uses seed `base * 1_000_003 + i`."""

    def __init__(self, kind: str, config, base: int):
        self.kind, self.config, self.base, self.draws = kind, config, int(base), 0

    def take(self, n: int) -> list:
        scenes = sample_scenes(n, self.kind, "train", seed=self.base * 1_000_003 + self.draws, config=self.config)
        self.draws += 1
        return scenes


def to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, F, H, W, 3)` / `(B, H, W, 3)` -> float in [-1, 1], `(B, 3, F, H, W)` / `(B, 3, H, W)`."""
    x = pixels.float() / 127.5 - 1.0
    return x.permute(0, 4, 1, 2, 3) if x.ndim == 5 else x.permute(0, 3, 1, 2)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class PixelBank:
    """`size` renders on `device`; `batch(n, gen)` draws uint8 renders, `refresh(n)` re-renders n slots."""

    def __init__(self, stream: SceneStream, size: int, device: torch.device, chunk: int = 512):
        self.stream, self.device, self.chunk = stream, device, chunk
        self.pixels = torch.cat([self._render(min(chunk, size - i)) for i in range(0, size, chunk)])

    def _render(self, n: int) -> torch.Tensor:
        return render_v2(self.stream.take(n), self.stream.config, self.device)

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return self.pixels[torch.randint(len(self.pixels), (n,), device=self.device, generator=gen)]

    def refresh(self, n: int, gen: torch.Generator) -> None:
        slots = torch.randperm(len(self.pixels), device=self.device, generator=gen)[:n]
        self.pixels[slots] = self._render(len(slots))


@torch.no_grad()
def encode_pixels(pipe, pixels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Raw posterior means (fp32) of uint8 renders, `chunk` at a time."""
    out = []
    for i in range(0, len(pixels), chunk):
        with autocast(pixels.device):
            out.append(flow.raw_latents(pipe, to_model(pixels[i:i + chunk])).float())
    return torch.cat(out)


class LatentBank:
    """`size` slots of (normalised latent, conditioning rows) on the device; see the module docstring.

    Args:
        pipe: the pipeline, its VAE trained (and its latent statistics set, unless `fit_stats`).
        stream: where scenes come from. text: `(max_sequence_length, prompt_template)` of the pipeline call.
        fit_stats: set the VAE's latent statistics from the first fill before normalising (once, when the VAE
            has just finished training; `stats` then holds them).
    """

    def __init__(self, pipe, stream: SceneStream, size: int, device: torch.device, text: tuple,
                 fit_stats: bool = False, chunk: int = 512):
        self.pipe, self.stream, self.device, self.text, self.chunk = pipe, stream, device, text, chunk
        raw, conds = zip(*(self._encode(min(chunk, size - i)) for i in range(0, size, chunk)))
        raw = torch.cat(raw)
        self.stats = flow.set_latent_stats(pipe, raw) if fit_stats else None
        self.latents = flow.normalise(pipe, raw)
        self.cond = {k: (conds[0][k] if k == "text_ids" else torch.cat([c[k] for c in conds])) for k in conds[0]}
        self.empty = flow.encode_text(pipe, [""], *text)

    def _encode(self, n: int, normalised: bool = False) -> tuple[torch.Tensor, dict]:
        scenes = self.stream.take(n)
        raw = encode_pixels(self.pipe, render_v2(scenes, self.stream.config, self.device))
        cond = flow.encode_text(self.pipe, [s.prompt for s in scenes], *self.text)
        return (flow.normalise(self.pipe, raw) if normalised else raw), cond

    def __len__(self) -> int:
        return len(self.latents)

    def sample(self, n: int, gen: torch.Generator, dropout: float = 0.0) -> tuple[torch.Tensor, dict]:
        """A batch: latents `(n, ...)` and conditioning; with `dropout`, rows become the empty prompt's."""
        idx = torch.randint(len(self.latents), (n,), device=self.device, generator=gen)
        cond = flow.index_cond(self.cond, idx)
        if dropout > 0:
            drop = torch.rand(n, device=self.device, generator=gen) < dropout
            for key, value in cond.items():
                if key != "text_ids":
                    mask = drop.view((n,) + (1,) * (value.ndim - 1))
                    cond[key] = torch.where(mask, self.empty[key].expand_as(value), value)
        return self.latents[idx], cond

    @torch.no_grad()
    def refresh(self, n: int, gen: torch.Generator) -> None:
        """Replace `n` random slots with fresh scenes (rendered, encoded, their prompts encoded)."""
        slots = torch.randperm(len(self.latents), device=self.device, generator=gen)[:n]
        latents, cond = self._encode(len(slots), normalised=True)
        self.latents[slots] = latents
        for key, value in cond.items():
            if key != "text_ids":
                self.cond[key][slots] = value
