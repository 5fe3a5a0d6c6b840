"""cfg 2 x ulysses 2 on 4 gloo processes through the torchrun API (env:// rendezvous, one process per rank).

Four Ray actors do not fit this suite's 2-core budget next to the other modules, so the 4-rank layout is checked
the way a torchrun / SLURM user runs it: `apply_sequence_parallel(cfg_degree=2, ulysses_degree=2)`, the bridge,
`apply_cfg_parallel`, `apply_parallel_vae`, each rank driving an `Engine`. Rank 0's latents and frames must equal
one process's, in full compute and bridged, and every rank's bridge must have cached its own branch only.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lbdist.generation import GenerationRequest
from lbdist.parallel import xdit

pytestmark = pytest.mark.skipif(not (xdit.installed("xfuser") and xdit.installed("yunchang")),
                                reason="needs the [sp] extra: pip install 'lbdist[sp]'")

STEPS = 6
WORLD = 4


def request(schedule=None) -> GenerationRequest:
    return GenerationRequest("a red circle", seed=3, num_inference_steps=STEPS, height=32, width=32, num_frames=5,
                             schedule=schedule)


def _rank(rank: int, port: int, queue) -> None:
    """One rank: the torchrun recipe of lbdist.parallel.sp's docstring, then two requests."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from lbdist.bridge import get_bridge
    from lbdist.generation.engine import Engine
    from lbdist.generation.loading import load_pipeline
    from lbdist.parallel.cfg import CFGParallelConfig, after_call, apply_cfg_parallel
    from lbdist.parallel.sp import SequenceParallelConfig, apply_sequence_parallel, remove_sequence_parallel
    from lbdist.parallel.vae import apply_parallel_vae

    loaded = load_pipeline("tiny:wan", "cpu", "float32")
    pipe = loaded.pipe
    apply_sequence_parallel(pipe, config=SequenceParallelConfig(cfg_degree=2, ulysses_degree=2, backend="gloo"))
    engine = Engine(loaded)  # bridge hooks on the wrapper
    apply_cfg_parallel(pipe, config=CFGParallelConfig(degree=2, sp=2))
    split = apply_parallel_vae(pipe)
    layout = {k: v for k, v in xdit.parallel_info().items() if k in ("cfg", "sp_size", "ulysses", "ring")}
    out = {"layout": layout}
    for schedule in (None, "3"):
        result = engine.run(request(schedule), keep_latents=True)
        calls = after_call(pipe, result.calls)
        branches = sorted({branch for _, branch, _ in get_bridge(pipe).trace})
        out[schedule] = (result.latents, result.frames, calls, branches, split is not None and split.calls > 0)
    queue.put((rank, out))
    remove_sequence_parallel(pipe)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=600) for _ in range(WORLD))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return results


@pytest.mark.parametrize("schedule", [None, "3"])
def test_cfg2_x_ulysses2_equals_single_process(ranks, schedule):
    from lbdist.generation.engine import Engine
    from lbdist.generation.loading import load_pipeline

    reference = Engine(load_pipeline("tiny:wan", "cpu", "float32")).run(request(schedule), keep_latents=True)
    for rank in range(WORLD):
        latents, frames, calls, branches, split = ranks[rank][schedule]
        torch.testing.assert_close(latents, reference.latents, atol=1e-5, rtol=0)
        np.testing.assert_allclose(frames, reference.frames, atol=1e-4, rtol=0)
        assert calls == reference.calls
        assert branches == (["cond"] if rank < 2 else ["uncond"])  # ranks 0, 1: cond half; 2, 3: uncond half
        assert split  # the decode ran split over the 4 ranks
        assert ranks[rank]["layout"] == {"cfg": 2, "sp_size": 2, "ulysses": 2, "ring": 1}
