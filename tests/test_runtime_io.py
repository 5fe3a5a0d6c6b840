"""Process defaults: output files get the user's umask, and CPU threads default to one per process."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from lbdist.io import atomic_write, save_image
from lbdist.storage import current_umask
from lbdist.runtime import default_threads


@pytest.fixture
def umask():
    """Set a umask for the test; the previous one is restored after."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_are_created_with_the_users_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    path = atomic_write(tmp_path / "out" / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    image = save_image(torch.zeros(3, 4, 4), tmp_path / "img.png")
    assert stat.S_IMODE(Path(image).stat().st_mode) == mode
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left


def test_an_adapter_set_on_disk_gets_the_umask_too(tmp_path, umask):
    from lbdist.bridge import LoraSettings, Schedule, random_adapter_set
    from lbdist.models import get_spec
    from tests.conftest import make_pipe

    umask(0o022)
    pipe = make_pipe("flux")
    lora = LoraSettings(2, 4.0, get_spec(pipe.transformer).lora_targets)
    random_adapter_set(pipe.transformer, Schedule.periodic(4, 2), lora=lora).save(tmp_path / "set")
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "set").iterdir()} == {0o644}


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("environ,device,expected", [
    ({}, "cpu", 1),
    ({"LBDIST_NUM_THREADS": "2"}, "cpu", 2),
    ({"LBDIST_NUM_THREADS": " 3 "}, "cuda", 3),
    ({"LBDIST_NUM_THREADS": ""}, "cpu", 1),
])
def test_default_threads_is_one_per_process_on_the_cpu_unless_overridden(threads, environ, device, expected):
    torch.set_num_threads(2)
    assert default_threads(device, environ) == expected == torch.get_num_threads()


@pytest.mark.parametrize("environ", [{"OMP_NUM_THREADS": "2"}, {"MKL_NUM_THREADS": "2"}])
def test_explicit_omp_or_mkl_threads_are_left_alone(threads, environ):
    torch.set_num_threads(2)
    assert default_threads("cpu", environ) == 2 == torch.get_num_threads()


def test_on_a_gpu_torch_defaults_are_left_alone(threads):
    torch.set_num_threads(2)
    assert default_threads("cuda:0", {}) == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_refused_naming_it(threads, value):
    with pytest.raises(ValueError, match=rf"LBDIST_NUM_THREADS='{value}': must be an integer >= 1"):
        default_threads("cpu", {"LBDIST_NUM_THREADS": value})
