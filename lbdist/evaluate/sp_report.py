"""bench_sp's numbers after measuring: per-rank summaries, derived speedups, the verdict against given targets,
merging runs measured in several calls, and the table (`tools/bench_sp.py`; measuring is `sp_bench.py`).

A report holds, per model, `runs["<degree>/<mode>"]` (mode `diffusers`: the plain model on one GPU, the
baseline; `xfuser`: xfuser's sequence-parallel wrapper) with median full and bridged step times and, at the loop
degree, whole bridged loops per interval N. `derive` computes SP speedup = t_full(1 GPU) / t_full(d), bridge
speedup at 1 GPU = T t_full / (F t_full + (T - F) t_bridged), the loop's speedup against T x calls x t_full(1 GPU)
and its ratio to (bridge speedup x SP speedup). Targets are the caller's (`SPTargets`, read by the tool from
tools/targets.json); this module holds none.
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..bridge import Schedule

REF_ELEMENTS = 1 << 17  # 1-GPU output kept for other calls' rel L2: every k-th element, at most this many


@dataclass(frozen=True)
class SPTargets:
    """What a set of models is judged by in bench_sp (values from the caller).

    label: how reports name the set (e.g. "issue 6").
    models: real-size names judged by this set; empty: every model no other set names.
    full_step_speedup: SP speedup of a full step over one GPU (diffusers) that must be reached at `sp_degree`.
    loop_speedup: speedup of each whole bridged loop at `sp_degree` over T x calls x t_full(1 GPU).
    of_product: fraction of (bridge speedup x SP speedup) each loop must reach; None: not judged.
    sp_degree: the degree judged, and the only degree whole loops may run at (their cost); None: the loop degree.
    min_repeats: fewest timed steps per median a report of these models may use.
    anchor: a published figure printed beside ours (JSON object with `model`, `one_gpu_s`, `eight_gpu_s`,
        `speedup`, `what`); None: no anchor.
    """

    label: str
    full_step_speedup: float
    loop_speedup: float
    models: tuple[str, ...] = ()
    of_product: float | None = None
    sp_degree: int | None = None
    min_repeats: int = 5
    anchor: Mapping[str, Any] | None = None

    def __post_init__(self):
        if not (self.full_step_speedup > 0 and self.loop_speedup > 0):
            raise ValueError(f"{self.label}: speedup targets must be > 0, got {self.full_step_speedup!r}, "
                             f"{self.loop_speedup!r}")
        if self.sp_degree is not None and (type(self.sp_degree) is not int or self.sp_degree < 1):
            raise ValueError(f"{self.label}: sp_degree must be an integer >= 1 or None, got {self.sp_degree!r}")
        if type(self.min_repeats) is not int or self.min_repeats < 1:
            raise ValueError(f"{self.label}: min_repeats must be an integer >= 1, got {self.min_repeats!r}")
        object.__setattr__(self, "models", tuple(self.models))

    @classmethod
    def from_dict(cls, label: str, data: Mapping[str, Any]) -> "SPTargets":
        known = {"full_step_speedup", "loop_speedup", "models", "of_product", "sp_degree", "min_repeats", "anchor"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{label}: unknown target fields {unknown}; allowed: {sorted(known)}")
        return cls(label, **data)


def targets_for(name: str, sets: list[SPTargets]) -> SPTargets | None:
    """The set that names `name`, else the set that names no model, else None."""
    named = [t for t in sets if name in t.models]
    return named[0] if named else next((t for t in sets if not t.models), None)


def summarise(per_rank: list[dict]) -> dict:
    """One run's row from every rank's measurements (rank 0's times; the slowest rank's median beside them)."""
    r0 = per_rank[0]
    row = {"full_s_median": statistics.median(r0["full_s"]), "full_s_all": r0["full_s"],
           "full_s_median_max_over_ranks": max(statistics.median(r["full_s"]) for r in per_rank),
           "bridged_s_median": statistics.median(r0["bridged_s"]), "bridged_s_all": r0["bridged_s"]}
    if "peak_gb" in r0:
        row["peak_gb_max_over_ranks"] = max(r["peak_gb"] for r in per_rank)
    if "loop" in r0:
        row["loop"] = r0["loop"]
        row["loops"] = r0["loops"]
    return row


def _per_interval(runs: dict, top: str, t1: float, sp: float | None, steps: int, bridge_speedup) -> dict:
    loops = {}
    if top in runs and "loop" in runs[top]:
        loops = runs[top].get("loops") or {str(runs[top]["loop"]["interval"]): runs[top]["loop"]}
    per = {}
    for key, loop in loops.items():
        bridge = bridge_speedup(loop["interval"])
        one_gpu = steps * loop["calls_per_step"] * t1
        measured = one_gpu / loop["seconds"]
        per[key] = {"interval": loop["interval"], "full_steps": loop["full_steps"],
                    "bridge_speedup_1gpu_computed": bridge, "one_gpu_full_loop_s_computed": one_gpu,
                    "loop_s_measured": loop["seconds"], "loop_speedup_vs_1gpu_full": measured,
                    "expected_product": bridge * sp, "of_product": measured / (bridge * sp)}
    return per


def derive(result: dict, name: str, loop_degree: int, steps: int, intervals: list[int],
           targets: SPTargets | None = None) -> None:
    """Speedups from the measured medians (per loop interval) into `result["derived"]`, judged by `targets`."""
    from ..models import get_spec_by_family

    runs, base = result["runs"], result["runs"].get("1/diffusers")
    if base is None:
        return
    t1, b1 = base["full_s_median"], base["bridged_s_median"]

    def bridge_speedup(interval: int) -> float:
        full_n = len(Schedule.periodic(steps, interval).full_steps)
        return steps * t1 / (full_n * t1 + (steps - full_n) * b1)

    derived = {"bridge_speedup_1gpu_computed": bridge_speedup(intervals[0]), "loop_degree": loop_degree,
               "sp_speedup": {k: t1 / run["full_s_median"] for k, run in runs.items()},
               "rel_l2_vs_1gpu": {k: run["rel_l2_vs_1gpu"] for k, run in runs.items() if "rel_l2_vs_1gpu" in run}}
    sp = derived["sp_speedup"].get(f"{loop_degree}/xfuser")
    per = _per_interval(runs, f"{loop_degree}/xfuser", t1, sp, steps, bridge_speedup)
    if per:
        derived["per_interval"] = per
        first = per.get(str(intervals[0])) or next(iter(per.values()))
        derived.update({k: first[k] for k in ("one_gpu_full_loop_s_computed", "loop_s_measured",
                                              "loop_speedup_vs_1gpu_full", "expected_product", "of_product")})
    if targets is not None:
        degree = targets.sp_degree or loop_degree
        derived["targets"] = judge(derived, targets, loop_degree)
        calls = len(get_spec_by_family(result["family"]).branches)
        mark = anchor(name, targets, t1, steps, calls, derived["sp_speedup"].get(f"{degree}/xfuser"), degree)
        if mark is not None:
            derived["anchor"] = mark
    result["derived"] = derived


def judge(derived: dict, targets: SPTargets, loop_degree: int) -> dict:
    """`{name: {value, threshold, met}}` for each target the measured runs can answer."""
    degree = targets.sp_degree or loop_degree
    out = {}
    sp = derived["sp_speedup"].get(f"{degree}/xfuser")
    if sp is not None:
        out[f"sp{degree}_full_step_speedup>={targets.full_step_speedup:g}"] = _verdict(sp, targets.full_step_speedup)
    if loop_degree == degree:
        for key, row in derived.get("per_interval", {}).items():
            out[f"bridge_x_sp{degree}>={targets.loop_speedup:g} (N={key})"] = _verdict(
                row["loop_speedup_vs_1gpu_full"], targets.loop_speedup)
            if targets.of_product is not None:
                out[f"bridge_x_sp{degree}>={targets.of_product:g}*product (N={key})"] = _verdict(
                    row["of_product"], targets.of_product)
    return out


def _verdict(value: float, threshold: float) -> dict:
    return {"value": value, "threshold": threshold, "met": value >= threshold}


def anchor(name: str, targets: SPTargets, t1: float, steps: int, calls: int, sp: float | None,
           degree: int) -> dict | None:
    """Our whole-generation times beside the targets' published anchor (None when the set has no anchor)."""
    if targets.anchor is None:
        return None
    out = {"ours_50_full_steps_1gpu_s_computed": steps * calls * t1, "calls_per_step": calls, "sp_degree": degree}
    if sp is not None:
        out.update({f"ours_50_full_steps_sp{degree}_s_computed": steps * calls * t1 / sp,
                    f"ours_sp{degree}_speedup": sp})
    if name == targets.anchor.get("model"):
        out["xdit"] = dict(targets.anchor)
    else:
        out["xdit"] = None
        out["note"] = f"the anchor ({targets.anchor.get('speedup')}x) is for {targets.anchor.get('model')}"
    return out


def check_request(models: list[str], degrees: list[int], loop_degree: int, largest: int, repeats: int, steps: int,
                  quick: bool, merge_only: bool, sets: list[SPTargets]) -> str | None:
    """Why these arguments would measure something other than the targets ask for, or None."""
    if loop_degree < largest:
        return (f"--loop-degree {loop_degree} is below the largest degree {largest}: whole loops run only at "
                "the largest degree")
    for name in models:
        t = targets_for(name, sets)
        if t is not None and t.sp_degree is not None and not quick and loop_degree < t.sp_degree:
            return (f"{name}: {t.label} runs whole {steps}-step loops only at SP {t.sp_degree} (below it a loop "
                    f"costs {t.sp_degree}/{loop_degree} times as much): pass --loop-degree {t.sp_degree} and measure "
                    f"degree {t.sp_degree} in this call or a later one (--merge)")
    if merge_only or quick:
        return None
    need = max([t.min_repeats for t in (targets_for(n, sets) for n in models) if t is not None] or [5])
    if repeats < need:
        fewer = sorted({f"{n} ({t.label}: {t.min_repeats})" for n in models for t in sets if n in t.models
                        and t.min_repeats < 5})
        return (f"--repeats {repeats} < {need}: reports take the median of >= {need} timed steps for these models"
                + (f"; only {', '.join(fewer)} alone may use fewer" if fewer else ""))
    return None


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def reference(sample: torch.Tensor) -> dict:
    """What another call needs of the 1-GPU output to give its own runs a rel L2: every k-th element."""
    flat = sample.flatten()
    stride = max(1, -(-flat.numel() // REF_ELEMENTS))
    return {"stride": stride, "numel": flat.numel(), "values": flat[::stride].clone()}


def compare_to_one_gpu(result: dict, row: dict, sample: torch.Tensor, mode: str) -> None:
    """Keep the 1-GPU output (first diffusers run), or give `row` its rel L2 against it (or a merged subset)."""
    base, ref = result.get("_sample"), result.get("_ref")
    if base is None and ref is None and mode == "diffusers":
        result["_sample"] = sample
    elif base is not None:
        row["rel_l2_vs_1gpu"] = rel_l2(sample, base)
    elif ref is not None:  # the 1-GPU output came from another call (--merge): compare a strided subset
        flat = sample.flatten()
        if flat.numel() == ref["numel"]:
            row["rel_l2_vs_1gpu"] = rel_l2(flat[::ref["stride"]], ref["values"])
            row["rel_l2_vs_1gpu_stride"] = ref["stride"]


def samples_path(path: Path) -> Path:
    return path.with_name(path.stem + ".samples.pt")


def write(report: dict, path: Path) -> None:
    """The report as JSON (keys starting with `_` left out) and, beside it, the 1-GPU output subsets."""
    from ..storage import write_file
    from .timing import write_json

    clean = {**report, "models": {n: {k: v for k, v in m.items() if not k.startswith("_")}
                                  for n, m in report["models"].items()}}
    write_json(path, clean)
    refs = {n: reference(m["_sample"]) if "_sample" in m else m["_ref"] for n, m in report["models"].items()
            if "_sample" in m or "_ref" in m}
    if refs:  # small (<= 2**17 elements a model): travels with the JSON, for --merge in a later call
        write_file(samples_path(Path(path)), lambda tmp: torch.save(refs, tmp))


class MergeError(ValueError):
    """Earlier reports that cannot be merged with each other or with this call."""


def load_parts(paths: list[str], warn: bool = True) -> list[tuple[Path, dict, dict]]:
    """(path, report, 1-GPU references) of each earlier report given to --merge."""
    parts = []
    for p in map(Path, paths):
        report = json.loads(p.read_text())
        if report.get("benchmark") != "bench_sp":
            raise MergeError(f"{p} is not a bench_sp report (benchmark={report.get('benchmark')!r})")
        # reports from before several intervals and a separate loop degree: one interval, loops at the largest degree
        report.setdefault("intervals", [report["interval"]])
        report.setdefault("loop_degree", max(report.get("degrees") or [1]))
        side = samples_path(p)
        refs = torch.load(side, weights_only=True) if side.exists() else {}
        if warn and not side.exists():
            print(f"[bench_sp] {side} missing: runs compared against {p}'s 1-GPU output get no rel L2",
                  file=sys.stderr)
        parts.append((p, report, refs))
    return parts


def provenance(path: Path, report: dict) -> list[dict]:
    """The measuring calls behind a report: its own `parts` if it is a merge, else the report itself."""
    if report.get("parts"):
        return report["parts"]
    return [{"file": path.name, "commit": report.get("commit"), "date": report.get("date"),
             "card": report.get("card"), "degrees": report.get("degrees"), "workers": report.get("workers", {}),
             "runs": {n: sorted(m["runs"]) for n, m in report.get("models", {}).items()}}]


def _check_same(report: dict, parts) -> None:
    same = ("quick", "steps", "repeats", "lora_rank", "intervals", "loop_degree")
    cards = {r.get("card") for _, r, _ in parts} | ({report["card"]} if report.get("card") else set())
    if len(cards - {None}) > 1:
        raise MergeError(f"cards differ: {sorted(c for c in cards if c)}: compare timings of one card only")
    for path, part, _ in parts:
        for key in same:
            if report.get(key) != part.get(key):
                raise MergeError(f"{path}: {key} = {part.get(key)!r}, this call has {report.get(key)!r}")


def merge_into(report: dict, parts, measuring: list[int]) -> None:
    """Take the earlier reports' runs, workers and 1-GPU references into `report` (this call measures the
    degrees in `measuring`). Refuses a different card, quick flag, step count, repeats, LoRA rank, intervals or
    loop degree, and any run measured twice; a different commit is recorded and warned about."""
    _check_same(report, parts)
    for path, part, refs in parts:
        for name, model in part["models"].items():
            if name not in report["models"]:
                continue
            mine = report["models"][name]
            for key, run in model["runs"].items():
                if key in mine["runs"] or (int(key.split("/")[0]) in measuring):
                    raise MergeError(f"{name} run {key} is both in {path} and in this call or another part")
                mine["runs"][key] = run
            if name in refs and "_ref" not in mine:
                mine["_ref"] = refs[name]
        for degree, w in part.get("workers", {}).items():
            report.setdefault("workers", {}).setdefault(degree, w)
        report.setdefault("card", part.get("card"))
    report["parts"] = [entry for path, part, _ in parts for entry in provenance(path, part)]
    commits = sorted(({e["commit"] for e in report["parts"]} | ({report["commit"]} if measuring else set())) - {None})
    if len(commits) > 1:
        print(f"[bench_sp] merging runs of different commits: {commits}", file=sys.stderr)
        report["commits"] = commits


def _l2(run: dict) -> str:
    return f"{run['rel_l2_vs_1gpu']:.1e}" if "rel_l2_vs_1gpu" in run else "-"


def _model_lines(name: str, m: dict) -> list[str]:
    d, lines = m.get("derived", {}), []
    for key, run in sorted(m["runs"].items(), key=lambda kv: (int(kv[0].split("/")[0]), kv[0])):
        lines.append(f"{name:18} {key:>12} {run['full_s_median']:>8.4f} {d.get('sp_speedup', {}).get(key, 0):>6.2f} "
                     f"{run['bridged_s_median']:>9.4f} {_l2(run):>8}")
    for key, p in d.get("per_interval", {}).items():
        lines.append(f"{name:18} N={key} bridge@1GPU {p['bridge_speedup_1gpu_computed']:.2f}x; loop at SP "
                     f"{d['loop_degree']} {p['loop_s_measured']:.2f} s vs 1 GPU full "
                     f"{p['one_gpu_full_loop_s_computed']:.1f} s = {p['loop_speedup_vs_1gpu_full']:.2f}x "
                     f"({p['of_product']:.2f} of product)")
    a = d.get("anchor")
    if a:
        deg = a.get("sp_degree")
        ours = f"ours: 50 full steps {a['ours_50_full_steps_1gpu_s_computed']:.0f} s on 1 GPU" + (
            f", {a[f'ours_50_full_steps_sp{deg}_s_computed']:.0f} s at SP {deg} ({a[f'ours_sp{deg}_speedup']:.2f}x)"
            if f"ours_sp{deg}_speedup" in a else "")
        x = a.get("xdit")
        theirs = (f"xDiT: {x['one_gpu_s']:.0f} s vs {x['eight_gpu_s']} s ({x['speedup']}x)" if x else a.get("note", ""))
        lines.append(f"{name:18} {ours}; {theirs}")
    if d.get("targets"):
        lines.append(f"{name:18} targets: " + "; ".join(
            f"{k}: {t['value']:.2f} {'met' if t['met'] else 'MISSED'}" for k, t in d["targets"].items()))
    return lines


def table(report: dict) -> str:
    """The report as text: all-to-all bandwidths, one line per run, loops, anchors and targets."""
    lines = [f"{report.get('card', '?')} | commit {report['commit'][:10]} | {report['date']}"]
    for degree, w in report.get("workers", {}).items():
        if "all_to_all" in w:
            lines.append(f"all-to-all over {degree} ranks ({w['backend']}): {w['all_to_all']['algbw_gb_s']:.1f} GB/s "
                         f"for {w['all_to_all']['megabytes']} MB")
    lines.append(f"{'model':18} {'run':>12} {'full s':>8} {'SP x':>6} {'bridged s':>9} {'rel L2':>8}")
    for name, m in report["models"].items():
        lines += _model_lines(name, m)
    return "\n".join(lines)
