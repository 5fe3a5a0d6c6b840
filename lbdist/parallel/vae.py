"""Parallel VAE decode: every rank decodes a band of rows, exchanging one-row halos per convolution.

    apply_parallel_vae(pipe)      # every rank of the group; pipe(...) then decodes split over the ranks

Patch parallelism as in xDiT's DistVAE, attached to diffusers' own decoders (Wan, HunyuanVideo, FLUX's
AutoencoderKL) without forking them. The decoder's input latent is cut into bands of rows, one per rank; inside
the decoder, while a call is split:

- every convolution with a kernel taller than one row first receives the rows it would read from the
  neighbouring bands (its halo: `(k - 1) / 2` rows from the rank above and below, one all-gather of the
  boundary rows); bands at the image edge keep the convolution's own padding (zeros, or HunyuanVideo's
  replicate), so each band computes exactly the rows of the one-rank decode;
- every GroupNorm (HunyuanVideo, FLUX) normalises with statistics all-reduced over the bands;
- the mid block (the one place with attention over the whole frame, at the lowest resolution) runs on the whole
  gathered input on every rank, and each rank keeps its band of the result;
- the bands of the output are all-gathered, so every rank's pipeline sees the whole video.

Everything else in these decoders (upsampling, per-position RMS norms, activations, the causal time caches that
Wan and HunyuanVideo keep between frame chunks) is row-local, so the split output equals the one-rank decode up
to floating-point summation order (the tests bound it at 1e-5 on [-1, 1] pixels). Whatever loop calls the
decoder (Wan's frame-by-frame decode, HunyuanVideo's temporal tiling, diffusers' spatial tiling) is unchanged:
each decoder call is split. A decoder with a module the split cannot handle (attention outside the mid block, a
strided or non-zero-padded convolution) is refused at `apply_parallel_vae` and decodes as before.

One GPU: `VaeDecodeConfig` (dtype, tiling, compile) and `apply_vae_speedups` are the single-device options the
benchmark compares (`tools/bench_perf.py`, phase `vae`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_ATTR = "_lbdist_vae_split"


class VaeSplit:
    """The split of one decoder over a process group (every rank holds one)."""

    def __init__(self, vae, group=None):
        self.vae, self.decoder, self.group = vae, vae.decoder, group
        self.world = torch.distributed.get_world_size(group)
        self.rank = torch.distributed.get_rank(group)
        self.active = False
        self.calls = 0  # decoder calls split so far
        self.halo = max((_halo(m) for m in self.decoder.modules() if _spatial_conv(m)), default=0)
        self._originals: list[tuple[object, str]] = []

    # --- collectives --------------------------------------------------------------------------------------
    def gather_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(all bands of `x` concatenated on dim -2, where this rank's band starts), on every rank; bands may
        differ by a row."""
        rows = torch.tensor([x.shape[-2]], dtype=torch.int64, device=x.device)
        counts = [torch.empty_like(rows) for _ in range(self.world)]
        torch.distributed.all_gather(counts, rows, group=self.group)
        counts = [int(c.item()) for c in counts]
        top = max(counts)
        padded = F.pad(x, (0, 0, 0, top - x.shape[-2])).contiguous() if x.shape[-2] < top else x.contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded, group=self.group)
        return torch.cat([p[..., :c, :] for p, c in zip(parts, counts)], dim=-2), sum(counts[:self.rank])

    def halos(self, top: torch.Tensor, bottom: torch.Tensor):
        """(rows from the band above, rows from the band below): None at the image edges."""
        edge = torch.cat([top, bottom], dim=-2).contiguous()
        parts = [torch.empty_like(edge) for _ in range(self.world)]
        torch.distributed.all_gather(parts, edge, group=self.group)
        p = top.shape[-2]
        above = parts[self.rank - 1][..., p:, :] if self.rank > 0 else None
        below = parts[self.rank + 1][..., :p, :] if self.rank < self.world - 1 else None
        return above, below

    def band(self, rows: int) -> tuple[int, int]:
        return rows * self.rank // self.world, rows * (self.rank + 1) // self.world

    # --- patched forwards ---------------------------------------------------------------------------------
    def decoder_forward(self, original):
        def forward(z, *args, **kwargs):
            rows = z.shape[-2]
            if self.active or rows < self.world * max(1, self.halo):  # too few rows to split: decode whole
                return original(z, *args, **kwargs)
            lo, hi = self.band(rows)
            self.active = True
            try:
                out = original(z[..., lo:hi, :], *args, **kwargs)
            finally:
                self.active = False
            self.calls += 1
            return self.gather_rows(out)[0]
        return forward

    def mid_forward(self, original):
        def forward(x, *args, **kwargs):
            if not self.active:
                return original(x, *args, **kwargs)
            mine = x.shape[-2]
            whole, offset = self.gather_rows(x)
            self.active = False
            try:
                out = original(whole, *args, **kwargs)
            finally:
                self.active = True
            return out[..., offset:offset + mine, :]
        return forward

    def conv_forward(self, module, original):
        p = _halo(module)
        own = module.padding[-2]

        def conv(x, weight, bias):
            if not self.active:
                return original(x, weight, bias)
            if own == 0:  # input already padded by the caller (causal convs): replace the inner pad rows
                above, below = self.halos(x[..., p:2 * p, :], x[..., -2 * p:-p, :])
                x = torch.cat([above if above is not None else x[..., :p, :], x[..., p:-p, :],
                               below if below is not None else x[..., -p:, :]], dim=-2)
                return original(x, weight, bias)
            above, below = self.halos(x[..., :p, :], x[..., -p:, :])
            zeros = torch.zeros_like(x[..., :p, :])
            x = torch.cat([above if above is not None else zeros, x, below if below is not None else zeros], dim=-2)
            padding = tuple(module.padding[:-2]) + (0, module.padding[-1])
            fn = F.conv3d if x.ndim == 5 else F.conv2d
            return fn(x, weight, bias, module.stride, padding, module.dilation, module.groups)
        return conv

    def norm_forward(self, module, original):
        def forward(x):
            if not self.active:
                return original(x)
            return _group_norm(x, module, self.group)
        return forward

    # --- install ------------------------------------------------------------------------------------------
    def _set(self, owner, name: str, value) -> None:
        self._originals.append((owner, name))
        setattr(owner, name, value)

    def install(self) -> None:
        dec = self.decoder
        self._set(dec, "forward", self.decoder_forward(dec.forward))
        self._set(dec.mid_block, "forward", self.mid_forward(dec.mid_block.forward))
        for module in dec.modules():
            if _spatial_conv(module):
                self._set(module, "_conv_forward", self.conv_forward(module, module._conv_forward))
            elif isinstance(module, torch.nn.GroupNorm):
                self._set(module, "forward", self.norm_forward(module, module.forward))

    def remove(self) -> None:
        for owner, name in reversed(self._originals):
            delattr(owner, name)
        self._originals = []


def _spatial_conv(module) -> bool:
    return isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.kernel_size[-2] > 1


def _halo(module) -> int:
    return (module.kernel_size[-2] - 1) // 2


def _group_norm(x: torch.Tensor, norm: torch.nn.GroupNorm, group) -> torch.Tensor:
    """GroupNorm of a band with the statistics of the whole image (two all-reduces, float64 sums)."""
    n, c = x.shape[:2]
    xf = x.float().reshape(n, norm.num_groups, -1)
    stats = torch.stack([xf.sum(-1, dtype=torch.float64),
                         torch.full((n, norm.num_groups), float(xf.shape[-1]), dtype=torch.float64, device=x.device)])
    torch.distributed.all_reduce(stats, group=group)
    mean = (stats[0] / stats[1]).float().unsqueeze(-1)
    centred = xf - mean
    var = centred.pow(2).sum(-1, dtype=torch.float64)
    torch.distributed.all_reduce(var, group=group)
    var = (var / stats[1]).float().unsqueeze(-1)
    y = (centred * torch.rsqrt(var + norm.eps)).reshape(x.shape)
    if norm.affine:
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = y * norm.weight.float().view(shape) + norm.bias.float().view(shape)
    return y.to(x.dtype)


def unsupported(decoder) -> list[str]:
    """Why `decoder` cannot be split (empty: it can)."""
    problems = []
    if getattr(decoder, "_compiled_call_impl", None) is not None:
        problems.append("the decoder is compiled (VaeDecodeConfig(compile=True) is a one-device option)")
    mid = getattr(decoder, "mid_block", None)
    if mid is None:
        problems.append(f"{type(decoder).__name__} has no mid_block")
    inside_mid = {id(m) for m in mid.modules()} if mid is not None else set()
    for name, module in decoder.named_modules():
        if id(module) in inside_mid:
            continue
        if "Attention" in type(module).__name__:
            problems.append(f"{name} ({type(module).__name__}) attends over the whole frame outside the mid block")
        if _spatial_conv(module):
            if module.stride[-2] != 1 or module.dilation[-2] != 1 or module.kernel_size[-2] % 2 == 0:
                problems.append(f"{name}: stride/dilation/even kernel in height")
            if module.padding[-2] not in (0, _halo(module)) or (module.padding[-2] and module.padding_mode != "zeros"):
                problems.append(f"{name}: height padding {module.padding[-2]} ({module.padding_mode})")
    return problems


def apply_parallel_vae(pipe_or_vae, *, group=None) -> VaeSplit | None:
    """Split `vae.decoder` over `group` (default: every rank); returns the split, or None (one rank, or a decoder
    the split cannot handle, which then decodes whole on every rank as before). Every rank must call it."""
    vae = getattr(pipe_or_vae, "vae", pipe_or_vae)
    decoder = getattr(vae, "decoder", None)
    if decoder is None or not torch.distributed.is_initialized() or torch.distributed.get_world_size(group) < 2:
        return None
    remove_parallel_vae(vae)
    if unsupported(decoder):
        return None
    split = VaeSplit(vae, group)
    split.install()
    setattr(vae, _ATTR, split)
    return split


def remove_parallel_vae(pipe_or_vae) -> None:
    vae = getattr(pipe_or_vae, "vae", pipe_or_vae)
    split = getattr(vae, _ATTR, None)
    if split is not None:
        split.remove()
        delattr(vae, _ATTR)


# --- one device -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VaeDecodeConfig:
    """Single-device decode options (what the benchmark sweeps).

    dtype: None (keep the pipeline's), "bfloat16", "float16" or "float32" for the whole VAE; latents are cast
        on the way in (FLUX's pipeline hands decode the transformer's dtype).
    tiling: diffusers' spatial tiling (`vae.enable_tiling()`): less memory, seams blended; off by default.
    compile: `torch.compile` the decoder in place (inductor; a few graphs for Wan's first-chunk / cached-chunk
        calls). One device only: the split decode patches the decoder's forward, which compiling would trace.
    """

    dtype: str | None = None
    tiling: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be None, 'bfloat16', 'float16' or 'float32', got {self.dtype!r}")
        for name in ("tiling", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


def apply_vae_speedups(pipe_or_vae, *, config: VaeDecodeConfig) -> None:
    """Apply `config` to the VAE in place (dtype cast with latents cast on the way in, tiling, compile)."""
    vae = getattr(pipe_or_vae, "vae", pipe_or_vae)
    if config.dtype is not None:
        dtype = getattr(torch, config.dtype)
        vae.to(dtype=dtype)
        original = vae._decode  # under decode (which lbdist's Engine times by wrapping it), above tiling

        def cast(z, *args, **kwargs):
            return original(z.to(dtype), *args, **kwargs)

        vae._decode = cast
    if config.tiling:
        vae.enable_tiling()
    if config.compile:
        if getattr(vae, _ATTR, None) is not None:
            raise ValueError("compile is a one-device option: this VAE's decode is split over ranks")
        vae.decoder.compile()
