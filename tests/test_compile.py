"""Compiled blocks (`lbdist.generation.compile`) under the bridge hooks, adapters and sequence parallelism.

Dynamo's compilations are counted per denoising step. Most tests use the `aot_eager` backend: dynamo traces,
guards and recompiles exactly as with inductor, without code generation (minutes on this CPU); one `slow` test
runs inductor itself. The claims: outputs equal eager ones; every compilation happens in the first steps of the
first generation (the first full step, and the first calibrated step of the final block with its LoRA layers),
none in later steps, none across bridged/full switches, none in a second generation.
"""
from __future__ import annotations

import os
import re
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lbdist import Schedule
from lbdist.bridge import LoraSettings, random_adapter_set
from lbdist.generation import GenerationRequest
from lbdist.generation.compile import CompileConfig, CompileCounter, compile_blocks, is_compiled
from lbdist.generation.engine import Engine
from lbdist.generation.loading import load_pipeline
from lbdist.models import get_spec

STEPS = 6
FAST = CompileConfig(backend="aot_eager")


def request(**extra) -> GenerationRequest:
    return GenerationRequest("a red circle", seed=3, num_inference_steps=STEPS, height=32, width=32, num_frames=5,
                             **extra)


def counted(engine: Engine, counter: CompileCounter, req: GenerationRequest):
    """Run `req`, labelling compilations with the step they happened in."""
    counter.label = 0

    def progress(done, total):
        counter.label = done

    return engine.run(req, progress=progress, keep_latents=True)


def test_config_values_are_checked():
    with pytest.raises(ValueError, match=re.escape("compile backend must be one of")):
        CompileConfig(backend="tvm")
    with pytest.raises(ValueError, match="is an inductor option"):
        CompileConfig(backend="aot_eager", mode="max-autotune")
    from lbdist import GeneratorConfig
    assert GeneratorConfig(compile=True).compile == CompileConfig()
    assert GeneratorConfig(compile=False).compile is None
    with pytest.raises(ValueError, match="compile must be True, False, None or a CompileConfig"):
        GeneratorConfig(compile="yes")


def test_compiling_after_the_bridge_is_refused():
    from lbdist.bridge import apply_bridge

    pipe = load_pipeline("tiny:wan", "cpu", "float32").pipe
    apply_bridge(pipe, config=None)
    with pytest.raises(ValueError, match="compile the blocks first, then apply the bridge"):
        compile_blocks(pipe.transformer, config=FAST)


def test_compiled_blocks_match_eager_and_never_recompile_across_steps_or_bridge_switches(tmp_path):
    eager = Engine(load_pipeline("tiny:wan", "cpu", "float32"), adapters={"set": str(tmp_path / "set")})
    transformer = eager.pipe.transformer
    spec = get_spec(transformer)
    random_adapter_set(transformer, Schedule.periodic(STEPS, 3), lora=LoraSettings(4, 8.0, spec.lora_targets),
                       std=0.2).save(tmp_path / "set")
    requests = [request(), request(schedule="3"), request(schedule="3", adapters="set"), request()]
    references = [eager.run(r, keep_latents=True).latents for r in requests]

    torch._dynamo.reset()
    engine = Engine(load_pipeline("tiny:wan", "cpu", "float32"), adapters={"set": str(tmp_path / "set")}, compile=FAST)
    assert is_compiled(engine.pipe.transformer)
    with CompileCounter() as counter:
        first = [counted(engine, counter, r) for r in requests]
        warm = counter.count
        again = [counted(engine, counter, r) for r in requests]
    for result, reference in zip(first + again, references + references):
        torch.testing.assert_close(result.latents, reference, atol=1e-5, rtol=0)
    assert first[2].steps == ["full", "calibrated", "calibrated"] * 2
    # full request: step 0 compiles the block graph; the calibrated request: step 1 (first calibrated call) compiles
    # the final block with its LoRA layers. Nothing else, and nothing in the second round.
    assert warm > 0 and set(counter.by_label) <= {0, 1}
    assert counter.count == warm


@pytest.mark.slow
def test_inductor_compiled_blocks_match_eager_with_the_bridge():
    eager = Engine(load_pipeline("tiny:wan", "cpu", "float32"))
    references = [eager.run(r, keep_latents=True).latents for r in (request(), request(schedule="3"))]
    torch._dynamo.reset()
    engine = Engine(load_pipeline("tiny:wan", "cpu", "float32"), compile=CompileConfig())
    with CompileCounter() as counter:
        results = [engine.run(r, keep_latents=True) for r in (request(), request(schedule="3"))]
        warm = counter.count
        engine.run(request(schedule="3"))
        engine.run(request())
    for result, reference in zip(results, references):
        torch.testing.assert_close(result.latents, reference, atol=1e-4, rtol=0)
    assert warm >= 1 and counter.count == warm


# --- under sequence parallelism: 2 gloo processes, xfuser's Ulysses wrapper ----------------------------------
def _sp_rank(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from lbdist.parallel.sp import SequenceParallelConfig, apply_sequence_parallel, remove_sequence_parallel

    loaded = load_pipeline("tiny:wan", "cpu", "float32")
    apply_sequence_parallel(loaded.pipe, config=SequenceParallelConfig(ulysses_degree=2, backend="gloo"))
    engine = Engine(loaded, compile=FAST)  # compiled after wrapping, before the bridge
    with CompileCounter() as counter:
        first = [counted(engine, counter, r).latents for r in (request(), request(schedule="3"))]
        warm = counter.count
        again = [counted(engine, counter, r).latents for r in (request(schedule="3"), request())]
    queue.put((rank, first, again, warm, counter.count, dict(counter.by_label)))
    remove_sequence_parallel(loaded.pipe)


def test_compiled_blocks_under_ulysses_2_match_one_process_without_recompiles():
    from lbdist.parallel import xdit

    if not (xdit.installed("xfuser") and xdit.installed("yunchang")):
        pytest.skip("needs the [sp] extra: pip install 'lbdist[sp]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_sp_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=600) for _ in range(2)]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    eager = Engine(load_pipeline("tiny:wan", "cpu", "float32"))
    full, bridged = (eager.run(r, keep_latents=True).latents for r in (request(), request(schedule="3")))
    for _, first, again, warm, total, by_step in results:
        for latents, reference in zip(first + again, [full, bridged, bridged, full]):
            torch.testing.assert_close(latents, reference, atol=1e-5, rtol=0)
        assert warm > 0 and total == warm and set(by_step) <= {0, 1}
