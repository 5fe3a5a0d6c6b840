"""`tools/bench_sp.py --quick`: the GPU benchmark's whole logic on CPU (tiny configs, Ray groups of 1 and 2 gloo ranks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbdist.parallel import xdit

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (xdit.installed("xfuser") and xdit.installed("ray")),
                                 reason="needs the [sp] extra: pip install 'lbdist[sp]'")]


def test_bench_sp_quick_runs_and_reports_every_number(tmp_path):
    out = tmp_path / "bench_sp.json"
    env = {**os.environ, "LBDIST_COMMIT": "test-commit", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, "tools/bench_sp.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["commit"] == "test-commit" and report["quick"] is True and report["card"] and report["date"]
    assert report["workers"]["2"]["backend"] == "gloo"
    for name, family in (("tiny-wan", "wan"), ("tiny-hunyuan-video", "hunyuan_video")):
        model = report["models"][name]
        assert model["family"] == family
        assert set(model["runs"]) == {"1/diffusers", "1/xfuser", "2/xfuser"}
        for run in model["runs"].values():
            assert len(run["full_s_all"]) == report["repeats"] and run["full_s_median"] > 0
            assert len(run["bridged_s_all"]) == report["repeats"] and run["bridged_s_median"] > 0
        assert model["runs"]["2/xfuser"]["rel_l2_vs_1gpu"] < 1e-5  # Ulysses-2 output equals one process
        loop = model["runs"]["2/xfuser"]["loop"]
        calls = 2 if family == "wan" else 1
        assert loop["stats"]["full"] == loop["full_steps"] * calls
        assert loop["stats"]["bridged"] == loop["stats"]["calibrated"] == (loop["steps"] - loop["full_steps"]) * calls
        assert loop["finite"]
        derived = model["derived"]
        assert derived["loop_speedup_vs_1gpu_full"] > 0 and set(derived["targets"]) == {
            "sp_full_step_speedup>=3.5", "bridge_x_sp>=0.9*product", "loop_speedup>=15"}
    assert "bridge@1GPU" in proc.stdout.splitlines()[-1]  # the table is printed last
