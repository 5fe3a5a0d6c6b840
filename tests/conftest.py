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

from helpers import FAMILIES, make_pipe  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Skip gpu / multigpu tests where the hardware is missing, naming what is missing."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "multigpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs >= 2 CUDA GPUs, found {gpus}"))
        elif "gpu" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU, found none"))


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def pipe(family):
    return make_pipe(family)
