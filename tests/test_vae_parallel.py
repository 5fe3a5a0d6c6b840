"""Split VAE decode (`lbdist.parallel.vae`) on 2 gloo processes against the one-rank decode of the same VAE.

The toy VAEs of the three families (lbdist/toy/build.py, size "toy": Wan's causal 3D decoder with RMS norms and
per-frame caches, HunyuanVideo's with GroupNorm and temporal tiling, FLUX's AutoencoderKL) decode random latents
whole on one rank, then split over two ranks; the difference must stay within float summation noise (stated
tolerance 1e-5 on [-1, 1] pixels; seen: about 3e-6). Also covered: a row count that does not split evenly,
diffusers' spatial tiling on top of the split, HunyuanVideo's temporal tiling, and the refusals.
"""
from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

TOLERANCE = 1e-5
CASES = {  # name: (family, latent shape, tiling)
    "wan": ("wan", (1, 16, 3, 16, 12), None),
    "wan-uneven-rows": ("wan", (1, 16, 2, 15, 12), None),
    "wan-tiled": ("wan", (1, 16, 2, 16, 16), dict(tile_sample_min_height=32, tile_sample_min_width=32,
                                                  tile_sample_stride_height=24, tile_sample_stride_width=24)),
    "hunyuan_video-temporal-tiles": ("hunyuan_video", (1, 16, 6, 16, 12), None),
    "flux": ("flux", (1, 8, 16, 12), None),
    "flux-tiled": ("flux", (1, 8, 16, 16), dict(tile_sample_min_size=32, tile_latent_min_size=8)),
}


def _tile(vae, tiling):
    if tiling is None:
        return
    if hasattr(vae, "tile_sample_min_height"):
        vae.enable_tiling(**tiling)
    else:  # AutoencoderKL keeps its tile sizes as attributes
        vae.use_tiling = True
        for name, value in tiling.items():
            setattr(vae, name, value)


def _rank(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from lbdist.parallel.vae import apply_parallel_vae, remove_parallel_vae
    from lbdist.toy.build import build_pipeline

    vaes = {family: build_pipeline(family, "toy").vae for family in ("wan", "hunyuan_video", "flux")}
    out = {}
    with torch.no_grad():
        for name, (family, shape, tiling) in CASES.items():
            vae = vaes[family]
            _tile(vae, tiling)
            z = torch.randn(shape, generator=torch.Generator().manual_seed(len(name)))
            whole = vae.decode(z).sample
            split = apply_parallel_vae(vae)
            parted = vae.decode(z).sample
            out[name] = (tuple(whole.shape), tuple(parted.shape), float((parted - whole).abs().max()), split.calls)
            remove_parallel_vae(vae)
            vae.use_tiling = False
    queue.put((rank, out))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def decoded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        return dict(queue.get(timeout=600) for _ in range(2))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_decode_equals_the_one_rank_decode(decoded, case):
    for rank in (0, 1):
        whole, parted, error, calls = decoded[rank][case]
        assert parted == whole
        assert error < TOLERANCE, f"rank {rank}: max |split - whole| = {error:.2e}"
        assert calls >= 1  # the decoder really ran split


def test_a_decoder_with_attention_outside_the_mid_block_is_refused():
    from lbdist.parallel.vae import unsupported
    from lbdist.toy.build import build_pipeline

    decoder = build_pipeline("flux", "toy").vae.decoder
    assert unsupported(decoder) == []
    decoder.up_blocks[0].add_module("extra", copy.deepcopy(decoder.mid_block.attentions[0]))
    problems = unsupported(decoder)
    assert problems and "attends over the whole frame outside the mid block" in problems[0]


def test_one_process_gets_no_split_and_speedup_options_are_checked():
    from lbdist.parallel.vae import VaeDecodeConfig, apply_parallel_vae
    from lbdist.toy.build import build_pipeline

    assert apply_parallel_vae(build_pipeline("wan", "toy")) is None  # no process group: decodes as before
    with pytest.raises(ValueError, match="dtype must be None, 'bfloat16', 'float16' or 'float32', got 'fp8'"):
        VaeDecodeConfig(dtype="fp8")
