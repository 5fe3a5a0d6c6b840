"""CFG-parallel on a local Ray cluster: 2 gloo ranks, each running one guidance branch of every step.

Against one process (an `Engine` over the same tiny pipeline): Wan (true CFG on every call) in full compute, bridged
and bridged with resident adapters; FLUX with true CFG (`true_cfg_scale` and a negative prompt); a guidance-off
request on the same group; the bridge cache of each rank holds its own branch only. The decode is split over both
ranks (`lbdist.parallel.vae`), so frames are compared too. One Ray cluster and one group serve the module.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lbdist import Schedule
from lbdist.bridge import LoraSettings, random_adapter_set
from lbdist.generation import GenerationRequest
from lbdist.generation.engine import Engine
from lbdist.generation.loading import LoadedPipeline, load_pipeline
from lbdist.models import get_spec
from lbdist.parallel import PipelineFactory, WorkerGroup, WorkerGroupConfig, xdit

ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(__import__(__name__))  # Ray workers cannot import this test module
pytestmark = pytest.mark.skipif(not (xdit.installed("xfuser") and xdit.installed("yunchang")),
                                reason="needs the [sp] extra: pip install 'lbdist[sp]'")

STEPS = 6
SCHEDULE = Schedule.periodic(STEPS, 3)
SIZES = {"wan": dict(height=32, width=32, num_frames=5), "flux": dict(height=32, width=32)}
ATOL = 1e-5


def true_cfg_flux(device: str = "cpu") -> LoadedPipeline:
    """tiny:flux whose requests run true CFG (`true_cfg_scale` 3 from the defaults, a negative prompt per request)."""
    loaded = load_pipeline("tiny:flux", device, "float32")
    return LoadedPipeline(loaded.pipe, loaded.family, loaded.source, {**loaded.call_defaults, "true_cfg_scale": 3.0})


FACTORIES = {"wan": PipelineFactory("lbdist.generation.loading:load_pipeline",
                                    {"source": "tiny:wan", "dtype": "float32"}),
             "flux": PipelineFactory(true_cfg_flux)}


def request(family: str, **extra) -> GenerationRequest:
    negative = {"negative_prompt": "a blue square"} if family == "flux" else {}
    return GenerationRequest("a red circle", seed=3, num_inference_steps=STEPS, **SIZES[family], **negative, **extra)


def single_process(family: str, adapters=None, **extra):
    loaded = FACTORIES[family].build()
    engine = Engine(loaded, adapters={"set": str(adapters)} if adapters else None)
    return engine.run(request(family, adapters="set" if adapters else None, **extra), keep_latents=True)


def assert_same(result, reference):
    assert result.frames.shape == reference.frames.shape
    torch.testing.assert_close(result.latents, reference.latents, atol=ATOL, rtol=0)
    np.testing.assert_allclose(result.frames, reference.frames, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def group(cluster):
    group = WorkerGroup(WorkerGroupConfig(num_workers=2, cfg_degree=2, gpus_per_worker=0, call_timeout_s=300),
                        FACTORIES["wan"])
    group.start()
    yield group
    group.shutdown()


def _load(group, family):
    if group.model is None or group.model["family"] != family:
        group.load(FACTORIES[family])


def test_group_forms_two_cfg_halves_with_diffusers_own_transformer(group):
    assert [(i["rank"], i["cfg"], i["sp_size"], i["ulysses"]) for i in group.info] == [(0, 2, 1, 1), (1, 2, 1, 1)]
    assert group.model["transformer_class"] == "WanTransformer3DModel"  # no xfuser wrapper at one rank per half

    def probe(worker):
        from lbdist.parallel.cfg import get_cfg
        import lbdist
        return get_cfg(worker.pipe).branch, worker.vae_split is not None, lbdist.__file__

    here = __import__("lbdist").__file__
    assert group.run(probe) == [("cond", True, here), ("uncond", True, here)]


@pytest.mark.parametrize("schedule", [None, "3"])
def test_cfg_parallel_wan_equals_single_process(group, schedule):
    _load(group, "wan")
    result = group.generate(request("wan", schedule=schedule), keep_latents=True)
    reference = single_process("wan", schedule=schedule)
    assert_same(result, reference)
    assert result.calls == reference.calls  # both branches counted, as on one device
    assert result.steps == reference.steps


def test_cfg_parallel_with_resident_adapters_equals_single_process(group, tmp_path):
    _load(group, "wan")
    transformer = load_pipeline("tiny:wan", "cpu", "float32").pipe.transformer
    spec = get_spec(transformer)
    adapters = random_adapter_set(transformer, SCHEDULE, lora=LoraSettings(4, 8.0, spec.lora_targets), std=0.2)
    adapters.save(tmp_path / "set")
    result = group.generate(request("wan", schedule="3", adapters=str(tmp_path / "set")), keep_latents=True)
    assert result.calls["calibrated"] == len(SCHEDULE.bridged_steps) * 2
    assert_same(result, single_process("wan", adapters=tmp_path / "set", schedule="3"))


def test_each_rank_runs_and_caches_only_its_own_branch(group):
    _load(group, "wan")

    def branches_seen(worker, req):
        from lbdist.bridge import get_bridge
        from lbdist.parallel.cfg import get_cfg

        runtime, cfg = get_bridge(worker.pipe), get_cfg(worker.pipe)
        skipped = cfg.skipped
        worker.generate(req)
        return sorted({branch for _, branch, _ in runtime.trace}), cfg.skipped - skipped

    for (branches, skipped), own in zip(group.run(branches_seen, request("wan", schedule="3")), ("cond", "uncond")):
        assert branches == [own]          # the bridge of this rank saw (and cached) its own branch only
        assert skipped == STEPS           # the other branch's call of every step was its partner's


def test_guidance_off_runs_the_cond_branch_on_both_halves(group):
    _load(group, "wan")
    result = group.generate(request("wan", guidance_scale=1.0), keep_latents=True)
    reference = single_process("wan", guidance_scale=1.0)
    assert_same(result, reference)
    assert result.calls == reference.calls == {"full": STEPS, "bridged": 0, "calibrated": 0}


@pytest.mark.parametrize("schedule", [None, "3"])
def test_cfg_parallel_flux_true_cfg_equals_single_process(group, schedule):
    _load(group, "flux")
    result = group.generate(request("flux", schedule=schedule), keep_latents=True)
    reference = single_process("flux", schedule=schedule)
    assert reference.calls["full"] + reference.calls["bridged"] == 2 * STEPS  # true CFG ran
    assert_same(result, reference)
    assert result.calls == reference.calls


def test_generator_picks_cfg_parallel_for_wan_on_an_even_group(cluster, group):
    from lbdist import Generator, GeneratorConfig

    group.shutdown()  # the module's CPUs go to the generator's own group
    config = GeneratorConfig(sp_degree=2, dtype="float32", worker={"gpus_per_worker": 0, "call_timeout_s": 300})
    with Generator("tiny:wan", config) as generator:
        assert (generator.layout.cfg, generator.layout.ulysses, generator.layout.ring) == (2, 1, 1)
        assert [i["cfg"] for i in generator.group.info] == [2, 2]
        assert_same(generator.generate(request("wan", schedule="3"), keep_latents=True),
                    single_process("wan", schedule="3"))
