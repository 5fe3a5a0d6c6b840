"""`tools/bench_fidelity.py --quick` and `tools/bench_speed.py --quick` on the CPU: every method produced finite
metrics, every peer executed less than full compute, LearniBridge ran its calibrated adapters, reports exist;
`tools/bench_distcal.py gpu --quick` (slow) ran every phase; and the layout rule that tools and the package never
edit the import path."""
from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def tool(name: str) -> dict:
    """A script of tools/ loaded as a module (its `main` not run), without touching the import path."""
    return runpy.run_path(str(ROOT / "tools" / f"{name}.py"))


def test_no_import_path_edits_in_tools_package_or_jobs():
    """`grep -rn sys.path tools lbdist jobs` finds nothing: scripts and jobs import the installed package."""
    needle = b"sys." + b"path"  # spelled apart so this file would not be a hit itself
    hits = [str(path.relative_to(ROOT)) for folder in ("tools", "lbdist", "jobs") if (ROOT / folder).is_dir()
            for path in sorted((ROOT / folder).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and needle in path.read_bytes()]
    assert hits == []


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    assert tool("bench_fidelity")["main"](["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_fidelity_quick_gives_finite_metrics_for_every_method(fidelity):
    _, results = fidelity
    assert results["config"]["quick"] and set(results["families"]) == {"wan", "hunyuan_video", "flux"}
    for family, fam in results["families"].items():
        applied = {n for n, m in fam["methods"].items() if m["applicable"]}
        expected = {"learnibridge", "bridge_uncal", "taylorseer", "taylorseer_lite", "fbcache", "magcache", "fewer_steps"}
        # PAB and FasterCache keep one state for both guidance branches: refused on Wan's separate CFG calls
        assert applied == (expected if family == "wan" else expected | {"pab", "fastercache"}), family
        for name in applied:
            points = fam["methods"][name]["points"]
            assert len(points) == 2, (family, name)
            for p in points:
                for metric in ("psnr", "ssim", "rel_l2", "adherence"):
                    assert p[metric] is not None and math.isfinite(p[metric]), (family, name, p["knob"], metric)
                assert 0.0 <= p["adherence"] <= 1.0 and p["rel_l2"] > 0


def test_fidelity_quick_every_peer_skipped_work(fidelity):
    out, results = fidelity
    for family, fam in results["families"].items():
        for name, m in fam["methods"].items():
            if not m["applicable"]:
                continue
            assert m["skips_at_every_knob"], (family, name, m["not_skipping_knobs"])
            for p in m["points"]:
                assert p["speedup"] > 1.0, (family, name, p)
                assert min(p["evaluations"].values()) < 1.0, (family, name, p)  # some attention / FFN / block run skipped
        lb = json.loads((out / "cells" / family / "learnibridge" / "4.json").read_text())
        assert all(row["bridge"]["calibrated"] > 0 for row in lb["per_prompt"])  # adapters really ran
        assert all(row["flops"] < fam["full"]["flops"] for row in lb["per_prompt"])


def test_fidelity_quick_writes_reports_and_resumes(fidelity):
    out, results = fidelity
    table = (out / "table.md").read_text()
    assert "## wan" in table and "LearniBridge" in table and "Not applied" in table
    for family in results["families"]:
        assert (out / "plots" / f"{family}.png").read_bytes()[:8] == PNG
        assert results["families"][family]["targets"]["evaluated"]
    cells = sorted((out / "cells").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    assert results["commit"] and results["date"] and results["card"]
    assert results["config"]["targets"]["at"] == json.loads((ROOT / "tools" / "targets.json").read_text())[
        "bench_fidelity"]["at"]  # the bar comes from tools/targets.json
    main = tool("bench_fidelity")["main"]
    assert main(["--quick", "--out", str(out), "--families", "flux", "--methods", "fewer_steps"]) == 0
    assert all(p.stat().st_mtime_ns == stamps[p] for p in cells)  # finished cells were not run again


def test_speed_quick_every_peer_skipped_work(tmp_path):
    out = tmp_path / "speed.json"
    assert tool("bench_speed")["main"](["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == ["tiny-wan", "tiny-hunyuan-video", "tiny-flux"]
    for model in report["models"]:
        assert model["t_full_ms"] > 0 and model["t_final_ms"] > 0
        runs = {(r["method"], r["kind"]): r for r in model["runs"]}
        loops = [r for r in model["runs"] if r["kind"] == "loop"]
        assert {r["method"] for r in loops} == {"learnibridge", "taylorseer", "taylorseer_lite", "magcache", "fbcache",
                                                "pab", "fastercache"}
        for r in loops:
            assert r["loop_s"] > 0 and math.isfinite(r["speedup"])
            assert r["flops_ratio"] < 1.0, (model["model"], r["method"])
            assert r["evaluations"]["attention"] < 1.0, (model["model"], r["method"])
        pipe = runs[("pipeline", "whole pipeline (LearniBridge)")]
        assert pipe["bridge_stats"]["calibrated"] == pipe["bridge_stats"]["bridged"] > 0
        assert pipe["text_encoding_s"] > 0 and pipe["vae_decode_s"] > 0 and 0 < pipe["fixed_s"] < pipe["total_s"]
        assert pipe["end_to_end_cap"] > 1.0
        est = runs[("pab", "estimate from step costs")]
        assert len(est["step_ms"]) == 3 and est["loop_s"] > 0


@pytest.mark.slow
def test_distcal_gpu_quick_runs_every_phase(tmp_path):
    """`tools/bench_distcal.py gpu --quick`: the GPU benchmark's code (worker groups record, Ray Train + DeepSpeed
    train on 1 and 2 workers, ZeRO stage 0 and 2 memory) on CPU workers; 2-8 min on two shared cores."""
    out = tmp_path / "distcal.json"
    import ray

    started_here = not ray.is_initialized()
    assert tool("bench_distcal")["main"](["gpu", "--quick", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert ray.is_initialized() != started_here  # the Ray it started is shut down (later tests start their own)
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert [(r["workers"], r["sp_degree"]) for r in phases["record"]] == [(1, 1), (2, 1), (2, 2)]
    assert all(r["seconds"] > 0 and r["steps_recorded"] == 16 for r in phases["record"])
    assert [r["workers"] for r in phases["train"]] == [1, 2]
    assert all(r["bridges"] == 12 and r["training_loop_s"] > 0 for r in phases["train"])
    assert [m["zero_stage"] for m in phases["memory"]] == [0, 2]
    assert all(len(m["peak_gb_per_rank"]) == 2 and min(m["peak_gb_per_rank"]) > 0 for m in phases["memory"])
    assert report["commit"] and report["targets"]["training_speedup_2gpu"] == 1.8 and "targets_met" not in report
