"""`tools/bench_perf.py --quick` on one process: the layout table, transformer-call costs eager and compiled (no
compilation after warm-up), a whole-pipeline run and the one-device VAE variants, written as a report that
`--table` prints and a second call extends. The full quick sweep (2 gloo ranks, CFG-parallel and Ulysses layouts)
is the committed tools/results/bench_perf_quick.json."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_perf_quick_on_one_process(tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "tools" / "bench_perf.py"))["main"]
    out = tmp_path / "perf.json"
    base = ["--quick", "--models", "tiny-wan", "--gpus", "1", "--out", str(out)]
    assert main(base + ["--phases", "layout", "calls", "vae"]) == 0
    assert main(base + ["--phases", "pipeline", "--variants", "eager", "--runs", "full", "N3"]) == 0
    report = json.loads(out.read_text())
    assert report["layout"]["tiny-wan"] == {"1": "cfg1xu1xr1", "2": "cfg2xu1xr1", "4": "cfg2xu2xr1",
                                            "8": "cfg2xu2xr2"}
    model = report["models"]["tiny-wan"]
    assert model["calls"]["compiled"]["compiles_after_warmup"] == 0
    assert set(model["vae"]["1gpu"]) >= {"fp32", "float32+tiling", "float32+compile"}
    run = model["pipeline"]["1gpu/eager"]
    assert set(run["runs"]) == {"full", "N3"} and run["compiles_after_warmup"] == 0
    assert run["runs"]["N3"]["calls"]["calibrated"] == run["runs"]["N3"]["calls"]["bridged"] > 0
    assert {"card", "commit", "date"} <= set(run["at"]) and report["targets"]["compiled_full_step"] == 1.15
    assert main(["--table", str(out)]) == 0
    assert "1gpu/eager N3" in capsys.readouterr().out
