"""lbdist.parallel without Ray: config validation, degree arithmetic against real tiny pipelines, import boundaries."""
from __future__ import annotations

import dataclasses
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lbdist import Schedule
from lbdist.generation import GenerationRequest
from lbdist.parallel import DegreeError, PipelineFactory, WorkerGroup, WorkerGroupConfig
from lbdist.parallel import degree, xdit
from helpers import call_kwargs, make_pipe

ROOT = Path(__file__).resolve().parents[1]


def test_degrees_must_multiply_to_the_world_size_and_the_error_prints_the_arithmetic():
    with pytest.raises(ValueError, match=re.escape("ulysses(2) * ring(2) = 4 != world_size(8)")):
        WorkerGroupConfig(num_workers=8, ulysses_degree=2, ring_degree=2)
    with pytest.raises(ValueError, match=re.escape("num_workers(6) is not divisible by ring(4)")):
        WorkerGroupConfig(num_workers=6, ring_degree=4)
    assert WorkerGroupConfig(num_workers=4).ulysses_degree == 4
    assert WorkerGroupConfig(num_workers=8, ring_degree=2).ulysses_degree == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_workers=0), "num_workers must be an integer >= 1, got 0"),
    (dict(num_workers=2, backend="mpi"), "backend must be one of ('auto', 'nccl', 'gloo'), got 'mpi'"),
    (dict(num_workers=2, backend="nccl", gpus_per_worker=0), "backend 'nccl' needs GPUs but gpus_per_worker=0"),
    (dict(num_workers=2, gpus_per_worker=2), "gpus_per_worker must be 0, 1 or None"),
    (dict(num_workers=2, placement_strategy="SPREAD"), "placement_strategy must be one of"),
    (dict(num_workers=2, call_timeout_s=0), "call_timeout_s must be > 0 or None, got 0"),
])
def test_invalid_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        WorkerGroupConfig(**kwargs)


def test_config_is_frozen_and_forwards_nvlink_switches(monkeypatch):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("NVSHMEM_DISABLE_NVLS", "1")
    config = WorkerGroupConfig(num_workers=2, env_vars={"A": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_workers = 4
    env = config.worker_env()
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["NVSHMEM_DISABLE_NVLS"] == "1" and env["A"] == "1"


def test_factory_and_request_validation():
    with pytest.raises(ValueError, match="must look like 'package.module:function'"):
        PipelineFactory("lbdist.toy.build.build_pipeline")
    factory = pickle.loads(pickle.dumps(PipelineFactory("lbdist.toy.build:build_pipeline", {"family": "wan"})))
    from lbdist.toy.build import build_pipeline
    assert factory.resolve() is build_pipeline
    with pytest.raises(ValueError, match="adapters were given without a schedule"):
        GenerationRequest("a", adapters="/tmp/set")
    request = pickle.loads(pickle.dumps(GenerationRequest("a", schedule="3", num_inference_steps=6)))
    assert request.bridge_schedule() == Schedule.periodic(6, 3)


def test_heads_must_divide_by_the_ulysses_degree():
    with pytest.raises(DegreeError, match=re.escape("40 attention heads % ulysses(3) = 1")):
        degree.check_heads("wan", {"num_attention_heads": 40}, 3)
    degree.check_heads("hunyuan_video", {"num_attention_heads": 24}, 4)


@pytest.mark.parametrize("family, size", [("wan", dict(height=32, width=48, num_frames=9)),
                                          ("hunyuan_video", dict(height=32, width=16, num_frames=5)),
                                          ("flux", dict(height=16, width=32))])
def test_token_count_matches_the_pipelines_own_latents(family, size):
    pipe = make_pipe(family)
    kwargs = call_kwargs(family, 1, **size)
    out = pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
    latents = out.frames if hasattr(out, "frames") else out.images
    config = pipe.transformer.config
    if family == "flux":
        expected = latents.shape[1]
    elif family == "wan":
        expected = latents.shape[2] // config.patch_size[0] * (latents.shape[3] // config.patch_size[1]) \
            * (latents.shape[4] // config.patch_size[2])
    else:
        expected = latents.shape[2] // config.patch_size_t * (latents.shape[3] // config.patch_size) \
            * (latents.shape[4] // config.patch_size)
    assert degree.token_count(pipe, family, kwargs) == expected


def test_token_count_not_divisible_by_the_degree_is_refused_with_the_arithmetic():
    pipe = make_pipe("wan")
    kwargs = call_kwargs("wan", 1, height=48, width=16, num_frames=1)  # 1 x 3 x 1 patches
    assert degree.check_call(pipe, "wan", kwargs, 1) == 3
    with pytest.raises(DegreeError, match=re.escape("3 tokens (height=48, width=16, num_frames=1) cannot be split "
                                                    "evenly over sequence-parallel degree 2: 3 % 2 = 1")):
        degree.check_call(pipe, "wan", kwargs, 2)
    with pytest.raises(DegreeError, match="fewer tokens than ranks"):
        degree.check_tokens("wan", 3, 4)


def test_missing_xfuser_fails_with_the_install_hint_before_anything_starts(monkeypatch):
    monkeypatch.setitem(sys.modules, "xfuser", None)  # what an uninstalled package looks like to import
    with pytest.raises(ImportError, match=re.escape("pip install 'lbdist[sp]'")):
        xdit.load_xfuser()
    import ray
    was_running = ray.is_initialized()
    with pytest.raises(ImportError, match=re.escape("xfuser, which is not installed: pip install 'lbdist[sp]'")):
        WorkerGroup(WorkerGroupConfig(num_workers=2, gpus_per_worker=0)).start()
    assert ray.is_initialized() == was_running  # refused before Ray was even started


def test_xfuser_is_imported_in_exactly_one_module():
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "lbdist").rglob("*.py")
                       if re.search(r"^\s*(import xfuser|from xfuser)", p.read_text(), re.M))
    assert importers == ["lbdist/parallel/xdit.py"]


def test_importing_lbdist_parallel_starts_nothing():
    code = ("import sys, lbdist.parallel; "
            "print(sorted(m for m in ('ray', 'xfuser', 'yunchang') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
