"""Derived numbers, targets and tables of `tools/bench_perf.py` results (kept apart to keep that file short).

    python tools/bench_perf.py --table tools/results/bench_perf_quick.json   # prints these tables
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cfg_step_speedup_2gpu": 1.9, "pipeline_over_loop": 0.9, "compiled_full_step": 1.15,
           "compiled_of_ceiling": 0.97, "hunyuan_bridge_2gpu_pipeline": 10.0}
PEERS = {"xdit_hunyuan_720p_ulysses4_h100": 3.70, "cache_dit_flux_2xh100_cache_compile": round(9.30 / 1.92, 2)}


def _speedups(runs: dict, intervals) -> dict:
    full = runs["full"]["timings"]
    out = {}
    for n in intervals:
        t = runs.get(f"N{n}", {}).get("timings")
        if t:
            loop, whole = full["denoise"] / t["denoise"], full["total"] / t["total"]
            out[str(n)] = {"loop": round(loop, 3), "pipeline": round(whole, 3),
                           "pipeline_over_loop": round(whole / loop, 3)}
    return out


def derive(model: dict, steps: int, intervals) -> dict:
    """Per-model derived numbers from whatever phases the report holds."""
    pipes, calls, out = model.get("pipeline", {}), model.get("calls", {}), {}
    for key, res in pipes.items():
        res["speedups"] = _speedups(res["runs"], intervals)
        res["step_s"] = round(res["runs"]["full"]["timings"]["denoise"] / steps, 4)
    base = pipes.get("1gpu/eager")
    if base:
        for key, res in pipes.items():
            if not key.startswith("1gpu"):
                out[f"step_speedup[{key}]"] = round(base["step_s"] / res["step_s"], 3)
                n = str(max(intervals))
                if f"N{n}" in res["runs"]:
                    out[f"bridge_x_gpus_pipeline[{key},N{n}]"] = round(
                        base["runs"]["full"]["timings"]["total"] / res["runs"][f"N{n}"]["timings"]["total"], 3)
    if "eager" in calls and "compiled" in calls:
        out["compiled_full_call"] = round(calls["eager"]["full_ms"] / calls["compiled"]["full_ms"], 3)
        comp = pipes.get("1gpu/compiled")
        for n, s in (comp or {}).get("speedups", {}).items():
            out[f"compiled_loop_of_ceiling[N{n}]"] = round(s["loop"] / calls["compiled"]["ceiling"][n], 3)
    if "eager" in calls and pipes.get("1gpu/eager") and pipes.get("1gpu/compiled"):
        out["compiled_full_step"] = round(pipes["1gpu/eager"]["step_s"] / pipes["1gpu/compiled"]["step_s"], 3)
    return out


def targets() -> dict:
    path = ROOT / "tools" / "targets.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {**TARGETS, **data.get("issue15", {})}


def check(name: str, model: dict, goal: dict) -> dict:
    d, verdicts = model.get("derived", {}), {}
    for key, value in d.items():
        if key.startswith("step_speedup[2gpu/cfg2") and name.startswith("wan"):
            verdicts[key] = value >= goal["cfg_step_speedup_2gpu"]
        if key.startswith("compiled_loop_of_ceiling"):
            verdicts[key] = value >= goal["compiled_of_ceiling"]
        if key.startswith("bridge_x_gpus_pipeline[2gpu") and name.startswith("hunyuan"):
            verdicts[key] = value >= goal["hunyuan_bridge_2gpu_pipeline"]
    if "compiled_full_step" in d:
        verdicts["compiled_full_step"] = d["compiled_full_step"] >= goal["compiled_full_step"]
    for key, res in model.get("pipeline", {}).items():
        for n, s in res.get("speedups", {}).items():
            verdicts[f"pipeline_over_loop[{key},N{n}]"] = s["pipeline_over_loop"] >= goal["pipeline_over_loop"]
    return verdicts


def environment(args) -> dict:
    import diffusers

    commit = os.environ.get("LBDIST_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or "cpu")
    return {"benchmark": "bench_perf", "quick": args.quick, "card": card, "commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "steps": args.steps,
            "intervals": args.intervals, "dtype": args.dtype, "lora_rank": args.lora_rank,
            "compile": {"backend": args.compile_backend, "mode": args.compile_mode}}


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def table(report: dict) -> str:
    lines = [f"bench_perf on {report['env']['card']} at {report['env']['commit'][:10]} ({report['env']['date']})",
             f"{'model':20} {'run':30} {'text s':>7} {'loop s':>8} {'decode s':>8} {'total s':>8}  speedups "
             "(loop / pipeline / ratio per N)  compiles"]
    for name, model in report["models"].items():
        for key, res in model.get("pipeline", {}).items():
            for label, run in res["runs"].items():
                t = run["timings"]
                s = res.get("speedups", {}).get(label[1:], {}) if label != "full" else {}
                sp = f"{s['loop']:.2f} / {s['pipeline']:.2f} / {s['pipeline_over_loop']:.2f}" if s else ""
                lines.append(f"{name:20} {key + ' ' + label:30} {t['text_encoders']:>7.2f} {t['denoise']:>8.2f} "
                             f"{t['decode']:>8.2f} {t['total']:>8.2f}  {sp:32} {res['compiles_after_warmup']}")
        for key, value in model.get("derived", {}).items():
            met = model.get("targets_met", {}).get(key)
            lines.append(f"{name:20} {key:60} {value:>8}" + ("" if met is None else f"  {'met' if met else 'MISSED'}"))
        for label, v in model.get("vae", {}).get("1gpu", {}).items():
            if label == "at":
                continue
            lines.append(f"{name:20} VAE 1 GPU {label:20} {v['decode_ms']:>10.1f} ms  max|err| {v['max_abs']:.2e}  "
                         f"PSNR {v['psnr_db']} dB  compiles {v['compiles']}")
        for gpus, v in model.get("vae", {}).items():
            if gpus != "1gpu":
                lines.append(f"{name:20} VAE split {gpus:10} {v['split_ms']:>10.1f} ms vs {v['one_gpu_ms']:.1f} ms "
                             f"({v['speedup']}x)  max|err| {v['max_abs']:.2e}")
    return "\n".join(lines)
