"""Bad inputs to the calibration job fail before any work starts, each with one line naming the value.

`prepare` (what jobs/calibrate_*.py call before `ray.init()`) is exercised in this process for the whole table,
and the job script itself once through `ray job submit`-free `python jobs/calibrate_wan.py` for the exit code
and the single line it prints.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbdist.distributed import prepare
from lbdist.distributed.config import CalibrationJob

REPO = Path(__file__).resolve().parents[1]


def _args(tmp_path, **over) -> list[str]:
    prompts = tmp_path / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("a red circle\na blue square\n")
    values = {"--model": "tiny:wan", "--prompts": str(prompts), "--schedule": "4", "--steps": "8",
              "--output": str(tmp_path / "out"), "--run-id": "r1", "--workers": "2"}
    values.update(over)
    out = []
    for k, v in values.items():
        if v is not None:
            out += [k, v]
    return out


def _empty(tmp_path) -> str:
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n")
    return str(path)


CASES = {
    "missing prompts file": (lambda t: {"--prompts": str(t / "nope.txt")}, "prompts file", "does not exist"),
    "no prompts": (lambda t: {"--prompts": _empty(t)}, "holds no prompts", None),
    "schedule outside the steps": (lambda t: {"--schedule": "steps:0,9"}, "does not fit 8 steps", "0..7"),
    "interval not below the steps": (lambda t: {"--schedule": "12"}, "interval 12", "8 steps"),
    "unwritable output": (lambda t: {"--output": "/etc/hostname/calib"}, "'/etc/hostname/calib' is not reachable",
                          None),
    "no driver for the URI": (lambda t: {"--output": "gs://lbdist-test-bucket/calib"}, "not reachable", "gcsfs"),
    "bad run id": (lambda t: {"--run-id": "../up"}, "run id '../up'", "letters, digits"),
    "model of another family": (lambda t: {"--model": "tiny:flux"}, "is a flux model", "calibrate_flux.py"),
    "sp degree not dividing the workers": (lambda t: {"--sp-degree": "3"}, "workers(2) % sp_degree(3)", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_in_one_line(case, tmp_path):
    over, first, second = CASES[case]
    with pytest.raises(ValueError) as info:
        prepare(_args(tmp_path, **over(tmp_path)), "wan")
    message = str(info.value)
    assert "\n" not in message
    assert first in message and (second is None or second in message), message


def test_run_id_reused_with_other_arguments(tmp_path):
    job, layout = prepare(_args(tmp_path, **{"--lr": "1e-3"}), "wan")
    assert isinstance(job, CalibrationJob) and (Path(layout.root) / "run.json").is_file()
    prepare(_args(tmp_path, **{"--lr": "1e-3", "--workers": "1"}), "wan")  # workers do not change the result
    with pytest.raises(ValueError) as info:
        prepare(_args(tmp_path, **{"--lr": "2e-3"}), "wan")
    message = str(info.value)
    assert "run id 'r1' was started" in message and "train.lr: 0.001 -> 0.002" in message and "\n" not in message
    prepare(_args(tmp_path, **{"--lr": "2e-3", "--restart": None}) + ["--restart"], "wan")  # restart: allowed


def test_job_script_exits_1_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "jobs/calibrate_wan.py", *_args(tmp_path, **{"--prompts": _empty(tmp_path)})],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    assert printed == [f"[calibrate] refused | prompts file {_empty(tmp_path)!r} holds no prompts (one per line; "
                       "'#' starts a comment)"], done.stdout + done.stderr
