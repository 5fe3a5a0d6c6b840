"""Checks that need a CUDA GPU (run on the GPU machine: `pytest -m gpu`)."""
from __future__ import annotations

import pytest
import torch

from lbdist import Schedule, enable_bridge
from lbdist.bridge import LoraSettings, random_adapter_set
from lbdist.models import get_spec
from helpers import generate, make_pipe

pytestmark = pytest.mark.gpu


def _host_to_device_copies(pipe, family, steps):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate(pipe, family, steps=steps)
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if "HtoD" in e.key or "Memcpy HtoD" in e.key)


@pytest.mark.parametrize("family", ["wan", "flux"])
def test_switching_resident_adapters_adds_no_host_to_device_copy(family):
    pipe = make_pipe(family).to("cuda")
    schedule = Schedule.periodic(7, 3)
    enable_bridge(pipe, schedule)
    generate(pipe, family, steps=7)  # warm up
    uncalibrated = _host_to_device_copies(pipe, family, 7)
    spec = get_spec(pipe.transformer)
    adapters = random_adapter_set(pipe.transformer, schedule, lora=LoraSettings(4, 8.0, spec.lora_targets))
    runtime = enable_bridge(pipe, schedule, adapters=adapters)
    generate(pipe, family, steps=7)
    calibrated = _host_to_device_copies(pipe, family, 7)
    assert runtime.stats["calibrated"] > 0
    assert calibrated == uncalibrated


def test_bridge_is_exact_with_every_step_full_on_cuda_bf16():
    pipe = make_pipe("flux").to("cuda", torch.bfloat16)
    plain = generate(pipe, "flux", steps=6)
    enable_bridge(pipe, Schedule.full(6))
    assert torch.equal(generate(pipe, "flux", steps=6), plain)
