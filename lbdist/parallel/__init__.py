"""Sequence-parallel sampling: a pipeline sharded over several GPUs with xfuser (xDiT), inside Ray actors.

One building block serves the calibration job, the Serve replicas and batch rendering: a `WorkerGroup` of Ray
actors, one per GPU, that each build the same pipeline, put its transformer under xfuser's sequence-parallel
wrapper, and run every generation together (Ulysses x ring = number of workers); rank 0 returns the result.

    from lbdist.generation import GenerationRequest
    from lbdist.parallel import PipelineFactory, WorkerGroup, WorkerGroupConfig

    factory = PipelineFactory("lbdist.generation.loading:load_pipeline",
                              {"source": "/models/Wan2.1-T2V-14B-Diffusers", "dtype": "bfloat16"})
    with WorkerGroup(WorkerGroupConfig(num_workers=4), factory) as group:      # 4 GPUs, Ulysses 4, NCCL
        result = group.generate(GenerationRequest("a red fox in the snow", num_inference_steps=50, height=480,
                                                  width=832, num_frames=81, schedule="6", adapters="adapters/wan14b-n6"))
    result.frames, result.timings, result.calls   # rank 0's GenerationResult

Most users reach groups through `lbdist.Generator(model, GeneratorConfig(sp_degree=4))`, which adds progress and
cancellation; this module is the layer underneath.

- Each rank calls the factory itself (a picklable callable, or "module:function" plus kwargs), so weights never
  pass through Ray's object store; it must be deterministic (ranks compare a weight checksum after loading).
- GPUs are reserved with a STRICT_PACK placement group; created inside a placement group (a Serve replica with
  `placement_group_bundles`), the group schedules its actors into that one and leaves it in place on shutdown.
- With the bridge (a request's `schedule` / `adapters`), every rank caches its own shard of the final block's
  input; bridged steps run only the final block, still sequence-parallel.
- Errors say what to change: `ulysses(2) * ring(2) != world_size(8)`, heads not divisible by the Ulysses degree,
  token counts not divisible by the degree, NCCL without GPUs, a missing extra (`pip install 'lbdist[sp]'`).
  A dead actor fails the call with `WorkerDiedError` naming its rank; `group.restart()` rebuilds the group.
- CPU (tests): `WorkerGroupConfig(num_workers=2, gpus_per_worker=0)` runs gloo ranks; xfuser's CPU compatibility
  patches live in `lbdist.parallel.xdit` (the one module that imports xfuser).
- `cfg_degree=2` splits the group into two halves that each run one guidance branch (`cfg.py`, one all-gather
  a step); `layout.py` holds the rule `Generator` uses to pick cfg x Ulysses x ring; `vae.py` splits the VAE
  decode over every rank (on by default, `parallel_vae=False` to turn off).

Nothing here starts Ray or imports xfuser at import time.
"""
from __future__ import annotations

from .config import GroupBrokenError, PipelineFactory, WorkerDiedError, WorkerGroupConfig
from .degree import DegreeError
from .group import WorkerGroup

__all__ = ["DegreeError", "GroupBrokenError", "PipelineFactory", "WorkerDiedError", "WorkerGroup", "WorkerGroupConfig"]

