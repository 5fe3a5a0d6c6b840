"""`tools/bench_sp.py --quick`: the GPU benchmark's whole logic on CPU (tiny sizes, Ray groups of 1 and 2 gloo ranks);
its issue-6 pieces (720p shapes, argument checks, derived numbers against tools/targets.json, merging split runs)
without Ray."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from lbdist.evaluate import realsize, sp_report
from lbdist.parallel import xdit

ROOT = Path(__file__).resolve().parents[1]
TARGETS = json.loads((ROOT / "tools" / "targets.json").read_text())["bench_sp"]
ISSUE5 = sp_report.SPTargets.from_dict("issue 5", TARGETS["issue 5"])
ISSUE6 = sp_report.SPTargets.from_dict("issue 6", TARGETS["issue 6"])

pytestmark = [pytest.mark.skipif(not (xdit.installed("xfuser") and xdit.installed("ray")),
                                 reason="needs the [sp] extra: pip install 'lbdist[sp]'")]


def bench_sp():
    return runpy.run_path(str(ROOT / "tools" / "bench_sp.py"))["main"]


def _quick(tmp_path, *args):
    env = {**os.environ, "LBDIST_COMMIT": "test-commit", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ
                                                        else []))}  # this checkout's lbdist, installed or not
    env.pop("OUT", None)
    return subprocess.run([sys.executable, "tools/bench_sp.py", "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_bench_sp_quick_runs_and_reports_every_number(tmp_path):
    out = tmp_path / "bench_sp.json"
    proc = _quick(tmp_path, "--out", str(out))
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
        loops = model["runs"]["2/xfuser"]["loops"]
        assert report["intervals"] == [3, 2] and set(loops) == {"3", "2"}  # one real loop per interval
        assert model["runs"]["2/xfuser"]["loop"] == loops["3"] and "loops" not in model["runs"]["1/xfuser"]
        calls = 2 if family == "wan" else 1
        for n, loop in loops.items():
            assert loop["interval"] == int(n) and loop["full_steps"] == {"3": 2, "2": 3}[n]  # 6 steps
            assert loop["stats"]["full"] == loop["full_steps"] * calls
            assert loop["stats"]["bridged"] == loop["stats"]["calibrated"] == (loop["steps"] - loop["full_steps"]) * calls
            assert loop["finite"]
        derived = model["derived"]
        assert set(derived["per_interval"]) == {"3", "2"} and derived["loop_degree"] == 2
        assert derived["loop_speedup_vs_1gpu_full"] == derived["per_interval"]["3"]["loop_speedup_vs_1gpu_full"] > 0
        assert set(derived["targets"]) == {"sp2_full_step_speedup>=3.5", *(f"bridge_x_sp2>={v} (N={n})" for n in
                                                                            ("3", "2") for v in ("15", "0.9*product"))}
    assert "targets:" in proc.stdout.splitlines()[-1]  # the table is printed last


@pytest.mark.slow
def test_bench_sp_quick_split_over_two_calls_merges_runs_and_rel_l2(tmp_path):
    """Issue 6's split: degree 1 in one call, the loop degree in a later one (--merge), as the 8-GPU run does."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    proc = _quick(tmp_path, "--models", "tiny-hunyuan-video", "--degrees", "1", "--loop-degree", "2",
                  "--no-sp1-wrapper", "--out", str(first))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads(first.read_text())
    assert set(a["models"]["tiny-hunyuan-video"]["runs"]) == {"1/diffusers"}  # no loop below the loop degree
    assert "loop" not in a["models"]["tiny-hunyuan-video"]["runs"]["1/diffusers"]
    assert (tmp_path / "a.samples.pt").exists()
    proc = _quick(tmp_path, "--models", "tiny-hunyuan-video", "--degrees", "2", "--merge", str(first),
                  "--out", str(second))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = json.loads(second.read_text())["models"]["tiny-hunyuan-video"]
    assert set(model["runs"]) == {"1/diffusers", "2/xfuser"} and set(model["runs"]["2/xfuser"]["loops"]) == {"3", "2"}
    assert model["runs"]["1/diffusers"] == a["models"]["tiny-hunyuan-video"]["runs"]["1/diffusers"]
    assert model["runs"]["2/xfuser"]["rel_l2_vs_1gpu"] < 1e-5  # against call 1's output, through the sidecar
    assert model["derived"]["per_interval"]["2"]["loop_speedup_vs_1gpu_full"] > 0


# --- issue 6 pieces, no Ray ---------------------------------------------------------------------------------------
def test_issue6_720p_shapes_split_evenly_up_to_8():
    assert realsize.latent_tokens("hunyuan-video-720p") == 118_800  # 33 x 45 x 80, from the family spec
    assert realsize.latent_tokens("wan-14b-720p") == 75_600  # 21 x 45 x 80
    for name in ("hunyuan-video-720p", "wan-14b-720p"):
        for degree in (1, 2, 4, 8):
            assert f"% {degree} = 0" in realsize.check_split(name, degree)
    with pytest.raises(ValueError, match=r"24 attention heads % ulysses\(16\) = 8"):
        realsize.check_split("hunyuan-video-720p", 16)
    with pytest.raises(ValueError, match=r"75600 tokens .* 75600 % 32 = 16"):
        realsize.check_split("wan-14b-720p", 32)


@pytest.mark.parametrize("args, message", [
    (["--models", "hunyuan-video-720p", "--degrees", "1", "2", "4", "--repeats", "3"], "only at SP 8"),
    (["--models", "wan-14b-720p", "--degrees", "1", "--repeats", "2", "--loop-degree", "8"], "--repeats 2 < 3"),
    (["--models", "wan-14b", "--repeats", "3"], "--repeats 3 < 5"),
    (["--degrees", "1", "2", "4", "--loop-degree", "2"], "below the largest degree 4"),
    (["--interval", "6", "--intervals", "6", "7"], "not both"),
    (["--intervals", "6", "6"], "distinct"),
])
def test_bench_sp_refuses_runs_the_issues_do_not_ask_for(args, message, capsys):
    with pytest.raises(SystemExit):
        bench_sp()(args)
    assert message in capsys.readouterr().err


def _run(full, bridged, loops=None):
    row = {"full_s_median": full, "bridged_s_median": bridged}
    if loops:
        calls = loops.pop("calls")
        row["loops"] = {str(n): {"seconds": s, "interval": n, "steps": 50, "calls_per_step": calls,
                                 "full_steps": len(range(0, 50, n))} for n, s in loops.items()}
        row["loop"] = row["loops"][str(min(loops))]
    return row


def test_issue6_derived_numbers_and_targets():
    derive = sp_report.derive
    hv = {"family": "hunyuan_video", "runs": {"1/diffusers": _run(40.0, 0.2), "2/xfuser": _run(20.5, 0.1),
                                              "8/xfuser": _run(5.9, 0.05, {6: 50.0, 7: 60.0, "calls": 1})}}
    derive(hv, "hunyuan-video-720p", 8, 50, [6, 7], ISSUE6)
    d = hv["derived"]
    bridge6 = 50 * 40.0 / (9 * 40.0 + 41 * 0.2)  # N=6: steps 0, 6, ..., 48 full
    assert d["per_interval"]["6"]["bridge_speedup_1gpu_computed"] == pytest.approx(bridge6)
    assert d["per_interval"]["6"]["loop_speedup_vs_1gpu_full"] == pytest.approx(2000 / 50.0)
    assert d["per_interval"]["7"]["loop_speedup_vs_1gpu_full"] == pytest.approx(2000 / 60.0)
    assert d["per_interval"]["6"]["of_product"] == pytest.approx(40.0 / (bridge6 * 40.0 / 5.9))
    t = d["targets"]
    sp8 = t["sp8_full_step_speedup>=6.5"]
    assert sp8["value"] == pytest.approx(40 / 5.9) and sp8["met"]
    assert t["bridge_x_sp8>=35 (N=6)"]["met"] and not t["bridge_x_sp8>=35 (N=7)"]["met"]  # 40x and 33.3x
    assert d["anchor"]["xdit"] == TARGETS["issue 6"]["anchor"]
    assert d["anchor"]["ours_50_full_steps_1gpu_s_computed"] == 2000.0
    wan = {"family": "wan", "runs": {"1/diffusers": _run(13.0, 0.2),
                                     "8/xfuser": _run(2.5, 0.04, {6: 40.0, "calls": 2})}}
    derive(wan, "wan-14b-720p", 8, 50, [6], ISSUE6)
    t = wan["derived"]["targets"]
    assert not t["sp8_full_step_speedup>=6.5"]["met"] and t["bridge_x_sp8>=35 (N=6)"]["value"] == pytest.approx(32.5)
    assert wan["derived"]["anchor"]["xdit"] is None and wan["derived"]["anchor"]["calls_per_step"] == 2
    old = {"family": "hunyuan_video", "runs": {"1/diffusers": _run(2.44, 0.047), "4/xfuser": _run(0.606, 0.017,
                                                                                               {6: 5.95, "calls": 1})}}
    derive(old, "hunyuan-video", 4, 50, [6], sp_report.targets_for("hunyuan-video", [ISSUE5, ISSUE6]))
    assert {k: v["met"] for k, v in old["derived"]["targets"].items()} == {
        "sp4_full_step_speedup>=3.5": True, "bridge_x_sp4>=15 (N=6)": True, "bridge_x_sp4>=0.9*product (N=6)": True}
    assert old["derived"]["loop_speedup_vs_1gpu_full"] == pytest.approx(50 * 2.44 / 5.95)
    assert "anchor" not in old["derived"]


def _part(path, runs, card="H100", degrees=(1,), loop_degree=8, model="hunyuan-video-720p"):
    report = {"benchmark": "bench_sp", "quick": False, "commit": "c0ffee", "date": "2026-01-01", "card": card,
              "steps": 50, "interval": 6, "intervals": [6, 7], "loop_degree": loop_degree, "repeats": 3,
              "lora_rank": 32, "degrees": list(degrees), "workers": {str(d): {"backend": "nccl"} for d in degrees},
              "models": {model: {"family": "wan" if model.startswith("wan") else "hunyuan_video", "runs": runs}}}
    path.write_text(json.dumps(report))
    return str(path)


def test_merge_only_joins_split_runs_and_refuses_mixed_cards(tmp_path, capsys):
    main = bench_sp()
    a = _part(tmp_path / "a.json", {"1/diffusers": _run(40.0, 0.2)})
    b = _part(tmp_path / "b.json", {"2/xfuser": _run(20.5, 0.1), "8/xfuser": _run(5.9, 0.05, {6: 50.0, 7: 60.0,
                                                                                               "calls": 1})},
              degrees=(2, 8))
    out = tmp_path / "merged.json"
    assert main(["--merge-only", "--merge", a, b, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    model = merged["models"]["hunyuan-video-720p"]
    assert set(model["runs"]) == {"1/diffusers", "2/xfuser", "8/xfuser"} and merged["commit"] == "c0ffee"
    assert [p["file"] for p in merged["parts"]] == ["a.json", "b.json"] and set(merged["workers"]) == {"1", "2", "8"}
    assert model["derived"]["targets"]["bridge_x_sp8>=35 (N=6)"]["met"]
    table = capsys.readouterr().out
    assert "targets: sp8_full_step_speedup>=6.5" in table and "MISSED" in table
    assert "1904 s vs 337.6 s (5.64x)" in table
    w = _part(tmp_path / "w.json", {"1/diffusers": _run(13.0, 0.2), "8/xfuser": _run(2.5, 0.04, {6: 40.0, 7: 38.0,
                                                                                              "calls": 2})},
              degrees=(1, 8), model="wan-14b-720p")
    both = tmp_path / "both.json"  # a merged report merges again: the final results JSON of the 8-GPU run
    assert main(["--merge-only", "--merge", str(out), w, "--out", str(both)]) == 0
    both = json.loads(both.read_text())
    assert [p["file"] for p in both["parts"]] == ["a.json", "b.json", "w.json"]
    assert both["models"]["wan-14b-720p"]["derived"]["targets"]["bridge_x_sp8>=35 (N=7)"]["value"] == pytest.approx(
        50 * 2 * 13.0 / 38.0)
    assert set(both["models"]["hunyuan-video-720p"]["runs"]) == {"1/diffusers", "2/xfuser", "8/xfuser"}
    c = _part(tmp_path / "c.json", {"4/xfuser": _run(10.0, 0.05)}, card="H200", degrees=(4,))
    with pytest.raises(SystemExit):
        main(["--merge-only", "--merge", a, c, "--out", str(tmp_path / "x.json")])
    assert "cards differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the same run in two parts
        main(["--merge-only", "--merge", a, a, "--out", str(tmp_path / "x.json")])
    assert "1/diffusers is both in" in capsys.readouterr().err


def test_merge_only_reads_the_committed_4_gpu_results(tmp_path, capsys):
    """Result files written before the benchmark moved into the package still merge, derive and print."""
    out = tmp_path / "again.json"
    assert bench_sp()(["--merge-only", "--merge", str(ROOT / "tools/results/bench_sp_h100x4.json"), "--out",
                       str(out)]) == 0
    model = json.loads(out.read_text())["models"]["hunyuan-video"]
    assert model["derived"]["targets"]["sp4_full_step_speedup>=3.5"]["met"]
    assert "H100" in capsys.readouterr().out
