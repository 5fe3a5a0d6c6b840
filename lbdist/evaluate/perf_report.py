"""`tools/bench_perf.py`'s report: derived numbers, targets met or missed, merging calls, tables.

A report is `{"env", "targets", "layout", "models": {name: {"calls", "pipeline", "vae", "derived", "targets_met"}}}`;
every entry a call adds is stamped with its card, commit and date (`merge`), since one report gathers several
device calls. Targets are the caller's (tools/targets.json, "bench_perf"); this module holds none.
"""
from __future__ import annotations

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


def merge(old: dict, new: dict, env: dict) -> None:
    """Fold one call's results into the report: pipeline runs accumulate per entry, each stamped with its card,
    commit and date (a report may gather several calls)."""
    stamp = {k: env[k] for k in ("card", "commit", "date")}
    for key, value in new.items():
        value = {**value, "at": stamp} if isinstance(value, dict) else value
        if isinstance(value, dict) and "runs" in value and key in old:
            runs = {**old[key]["runs"], **value["runs"]}
            compiles = max(old[key].get("compiles_after_warmup", 0), value["compiles_after_warmup"])
            value = {**value, "runs": runs, "compiles_after_warmup": compiles}
        old[key] = value


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


def table(report: dict) -> str:
    quick = report["env"].get("settings", {}).get("quick")
    lines = [f"bench_perf on {report['env']['card']} at {report['env']['commit'][:10]} ({report['env']['date']})"
             + (": --quick, CPU stand-ins on shared cores; the code paths ran, the numbers mean nothing" if quick else ""),
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
