"""`import lbdist` is cheap and starts nothing: no torch, diffusers, peft, transformers, Ray or xfuser, under 1 s."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "peft", "transformers", "ray", "xfuser", "deepspeed")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_import_lbdist_loads_no_heavy_library_and_takes_under_a_second():
    code = ("import sys, time; t = time.perf_counter(); import lbdist; dt = time.perf_counter() - t; "
            f"print(dt, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    seconds, loaded = _run(code).split(" ", 1)
    assert loaded == "[]"
    assert float(seconds) < 1.0


def test_request_validation_and_the_cli_parser_need_no_heavy_library():
    code = ("import sys; from lbdist.generation.request import GenerationRequest; from lbdist.cli import build_parser; "
            "build_parser(); GenerationRequest('a cat', schedule='5'); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert _run(code) == "[]"


def test_public_names_resolve_lazily():
    code = "import lbdist; print(lbdist.Generator.__module__, lbdist.Schedule.__module__, lbdist.apply_bridge.__module__)"
    assert _run(code) == "lbdist.generation.generator lbdist.bridge.schedule lbdist.bridge.api"
