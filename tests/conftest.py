"""Shared fixtures: tiny real diffusers pipelines of each family, built in code (no downloads)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The fixtures' models are tiny: one intra-op thread is fastest, and several pytest processes or Ray workers
# on two cores do not oversubscribe them.
torch.set_num_threads(1)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

FAMILIES = ("wan", "hunyuan_video", "flux")
WORDS = "red green blue yellow circle square triangle left right up down".split()


def pytest_collection_modifyitems(config, items):
    """Skip gpu / multigpu tests where the hardware is missing, naming what is missing."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "multigpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs >= 2 CUDA GPUs, found {gpus}"))
        elif "gpu" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU, found none"))


def make_pipe(family: str, **overrides):
    from lbdist.toy.build import build_pipeline

    return build_pipeline(family, "tiny", words=WORDS, seed=0, **overrides)


def call_kwargs(family: str, steps: int, **extra) -> dict:
    from lbdist.toy.build import CALL_DEFAULTS

    return {**CALL_DEFAULTS[family]["tiny"], "num_inference_steps": steps, "output_type": "latent", **extra}


def generate(pipe, family: str, prompt: str = "a red circle", steps: int = 10, seed: int = 0, **extra):
    out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **call_kwargs(family, steps, **extra))
    return out.frames if hasattr(out, "frames") else out.images


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def pipe(family):
    return make_pipe(family)
