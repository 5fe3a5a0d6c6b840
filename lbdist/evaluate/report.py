"""Turning fidelity cells into a report: curves per method, values at equal speedup, a comparison against a
given bar, a markdown table and PNG plots.

A *cell* is one (family, method, knob) run over the evaluation prompts (`lbdist.evaluate.fidelity`): its mean
metrics against full compute, its measured speedup (full-compute FLOPs / executed FLOPs) and its
module-evaluation counts. `summarize_method` interpolates a method's curve at the report speedups;
`check_targets` compares one method with every other against a `Targets` bar. The bar's values are the
caller's (the benchmarks read theirs from tools/targets.json); this module holds none.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .metrics import interpolate_curve

METRICS = ("psnr", "ssim", "rel_l2", "adherence")
REPORT_SPEEDUPS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0)  # where every curve is read off


@dataclass(frozen=True)
class Targets:
    """A bar one method is held to against its peers (no defaults: the values come from the caller).

    band: (low, high) speedups over which its PSNR curve must lie above every peer's (checked on a 0.25x grid).
    at: the speedup of the head-to-head comparison.
    margin_db: PSNR margin over the best peer at `at`.
    adherence_ratio: its prompt adherence at `at` relative to full compute's.
    ours: the method held to the bar; every other applicable method is a peer.
    """

    band: tuple[float, float]
    at: float
    margin_db: float
    adherence_ratio: float
    ours: str = "learnibridge"

    def __post_init__(self):
        lo, hi = (float(v) for v in self.band)
        if not 0 < lo < hi:
            raise ValueError(f"band must be (low, high) speedups with 0 < low < high, got {self.band!r}")
        if not self.at > 0:
            raise ValueError(f"at must be a speedup > 0, got {self.at!r}")
        if not 0 < self.adherence_ratio <= 1:
            raise ValueError(f"adherence_ratio must be in (0, 1], got {self.adherence_ratio!r}")
        object.__setattr__(self, "band", (lo, hi))

    @classmethod
    def from_dict(cls, data: dict) -> "Targets":
        """From a JSON object with the field names (e.g. a section of tools/targets.json)."""
        known = {"band", "at", "margin_db", "adherence_ratio", "ours"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown target fields {unknown}; allowed: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "band" else v for k, v in data.items()})


def finite_or_none(x):
    """JSON-safe float: None for inf / nan."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def summarize_method(cells: list[dict], targets=REPORT_SPEEDUPS) -> dict:
    """Curve points sorted by speedup, values at the target speedups, and the skip evidence."""
    cells = sorted(cells, key=lambda c: c["speedup"])
    speedups = [c["speedup"] for c in cells]
    at = {f"{t:g}": {} for t in targets}
    for metric in METRICS:
        values = [c["mean"][metric] if c["mean"][metric] is not None else math.nan for c in cells]
        for t, v in zip(targets, interpolate_curve(speedups, values, targets)):
            at[f"{t:g}"][metric] = v
    not_skipping = [c["knob"] for c in cells if not c["skips"]]
    return {"points": [{"knob": c["knob"], "speedup": c["speedup"], **{m: c["mean"][m] for m in METRICS},
                        "evaluations": c["evaluations"], "skips": c["skips"]} for c in cells],
            "speedup_range": [min(speedups), max(speedups)] if speedups else None,
            "at": at, "skips_at_every_knob": not not_skipping, "not_skipping_knobs": not_skipping}


def _value(summary: dict, metric: str, s: float) -> float | None:
    points = summary["points"]
    xs = [p["speedup"] for p in points]
    ys = [p[metric] if p[metric] is not None else math.nan for p in points]
    return interpolate_curve(xs, ys, [s])[0]


def check_targets(methods: dict, full_adherence: float, targets: Targets) -> dict:
    """Whether `targets.ours` beats every peer by the bar `targets`, with the numbers behind each verdict.

    `methods`: name -> summary (from `summarize_method`), only applicable methods with points.
    """
    ours = methods.get(targets.ours)
    if ours is None or not ours["points"]:
        return {"evaluated": False, "reason": f"{targets.ours} has no results"}
    peers = {n: m for n, m in methods.items() if n != targets.ours and m["points"]}
    lo, hi = targets.band
    grid = [float(s) for s in np.arange(lo, hi + 1e-9, 0.25)]
    violations, uncovered = [], []
    for s in grid:
        mine = _value(ours, "psnr", s)
        if mine is None:
            uncovered.append(s)
            continue
        for name, peer in peers.items():
            theirs = _value(peer, "psnr", s)
            if theirs is not None and theirs >= mine:
                violations.append({"speedup": s, "peer": name, "peer_psnr": theirs, "psnr": mine})
    mine_at = _value(ours, "psnr", targets.at)
    peer_at = {n: _value(p, "psnr", targets.at) for n, p in peers.items()}
    peer_at = {n: v for n, v in peer_at.items() if v is not None}
    best = max(peer_at, key=peer_at.get) if peer_at else None
    margin = None if mine_at is None or best is None else mine_at - peer_at[best]
    adherence_at = _value(ours, "adherence", targets.at)
    ratio = None if adherence_at is None or not full_adherence else adherence_at / full_adherence
    return {
        "evaluated": True,
        "curve_above_every_peer": {
            "met": not violations and not uncovered, "band": list(targets.band), "grid_step": 0.25,
            "violations": violations,
            "uncovered_speedups": uncovered,  # ours has no point reaching these: its curve cannot be compared there
        },
        "psnr_margin_at": {"speedup": targets.at, "psnr": mine_at, "best_peer": best,
                           "best_peer_psnr": peer_at.get(best), "margin_db": margin, "required_db": targets.margin_db,
                           "met": margin is not None and margin >= targets.margin_db},
        "adherence_at": {"speedup": targets.at, "adherence": adherence_at, "full_compute": full_adherence,
                         "ratio": ratio, "required_ratio": targets.adherence_ratio,
                         "met": ratio is not None and ratio >= targets.adherence_ratio},
        "peers_compared": sorted(peers),
    }


def _fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _compared_at(results: dict, fam: dict) -> float:
    """The speedup of the head-to-head comparison: the targets' `at` when the run had targets, else 5."""
    targets = results.get("config", {}).get("targets") or {}
    return float(targets.get("at", fam.get("targets", {}).get("psnr_margin_at", {}).get("speedup", 5.0)))


def markdown(results: dict) -> str:
    """The report as markdown: per family, PSNR at equal speedup, the targets, then every measured cell."""
    lines = ["# Fidelity against speedup", "",
             f"Model: `{results['config']['model']}`; commit {results.get('commit', '?')[:10]}, {results.get('date', '')}. "
             "Speedup = full-compute transformer FLOPs / executed FLOPs (CPU, `lbdist.evaluate.CostMeter`). "
             "Metrics against full compute on held-out prompts, averaged; values at a speedup are interpolated "
             "linearly between a method's measured points ('-': outside its measured range).", ""]
    for family, fam in results["families"].items():
        heads = [f"{t:g}x" for t in REPORT_SPEEDUPS]
        at = _compared_at(results, fam)
        lines += [f"## {family}", "", f"{fam['steps']} steps, {len(fam['evaluation_prompts'])} evaluation prompts, "
                  f"full-compute adherence {_fmt(fam['full']['adherence'], 3)}.", "",
                  "PSNR (dB) at equal speedup:", "",
                  "| method | knob | measured speedups | " + " | ".join(heads) + f" | adherence at {at:g}x |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in heads) + " | --- |"]
        for name, m in fam["methods"].items():
            if not m["applicable"]:
                continue
            rng = m["speedup_range"]
            vals = [_fmt(m["at"][f"{t:g}"]["psnr"]) for t in REPORT_SPEEDUPS]
            lines.append(f"| {m['label']} | {m['knob']} | {_fmt(rng[0])}-{_fmt(rng[1])}x | " + " | ".join(vals)
                         + f" | {_fmt(m['at'].get(f'{at:g}', {}).get('adherence'), 3)} |")
        lines += [""] + _target_lines(fam.get("targets", {}))
        skipped = [(m["label"], m["reason"]) for m in fam["methods"].values() if not m["applicable"]]
        if skipped:
            lines += ["Not applied:", ""] + [f"- {label}: {reason}" for label, reason in skipped] + [""]
        lines += ["Every cell (evaluations: attention / FFN / block runs relative to full compute):", "",
                  "| method | knob | speedup | PSNR | SSIM | rel. L2 | adherence | attention | FFN | blocks | skips |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in fam["methods"].values():
            for p in m.get("points", []):
                e = p["evaluations"]
                lines.append(f"| {m['label']} | {p['knob']:g} | {p['speedup']:.2f} | {_fmt(p['psnr'])} | "
                             f"{_fmt(p['ssim'], 3)} | {_fmt(p['rel_l2'], 4)} | {_fmt(p['adherence'], 3)} | "
                             f"{e['attention']:.3f} | {e['ffn']:.3f} | {e['blocks']:.3f} | {'yes' if p['skips'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def _target_lines(t: dict) -> list[str]:
    if not t.get("evaluated"):
        return [f"Targets: not evaluated ({t.get('reason', 'no LearniBridge results')}).", ""]
    above, margin, adh = t["curve_above_every_peer"], t["psnr_margin_at"], t["adherence_at"]
    out = ["Targets:", "",
           f"- PSNR curve above every peer over {above['band'][0]:g}-{above['band'][1]:g}x: "
           f"**{'met' if above['met'] else 'NOT met'}**"
           + (f" ({len(above['violations'])} grid points where a peer is at or above; first: "
              f"{above['violations'][0]['peer']} at {above['violations'][0]['speedup']:g}x)" if above["violations"] else "")
           + (f" (LearniBridge has no point at {', '.join(f'{s:g}x' for s in above['uncovered_speedups'])})"
              if above["uncovered_speedups"] else ""),
           f"- PSNR at {margin['speedup']:g}x >= best peer + {margin['required_db']:g} dB: **{'met' if margin['met'] else 'NOT met'}**"
           f" (LearniBridge {_fmt(margin['psnr'])} dB, best peer {margin['best_peer']} {_fmt(margin['best_peer_psnr'])} dB,"
           f" margin {_fmt(margin['margin_db'])} dB)",
           f"- adherence at {adh['speedup']:g}x >= {adh['required_ratio']:g} x full compute: "
           f"**{'met' if adh['met'] else 'NOT met'}** (ratio {_fmt(adh['ratio'], 3)})", ""]
    return out


def plot_family(family: str, fam: dict, path: str | os.PathLike, band: tuple[float, float] | None = None) -> Path:
    """PNG with PSNR, SSIM, relative L2 and adherence against speedup, one line per method; `band` (the speedups a
    bar compares over) is shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'lbdist[bench]'") from e
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = (("psnr", "PSNR vs full compute (dB)"), ("ssim", "SSIM vs full compute"),
              ("rel_l2", "relative L2 of final latents"), ("adherence", "prompt adherence"))
    for ax, (metric, title) in zip(axes.flat, panels):
        for name, m in fam["methods"].items():
            pts = [p for p in m.get("points", []) if p[metric] is not None and (metric != "rel_l2" or p[metric] > 0)]
            if not m["applicable"] or not pts:
                continue
            style = dict(lw=2.6, color="black", zorder=5) if name == "learnibridge" else dict(lw=1.3)
            ax.plot([p["speedup"] for p in pts], [p[metric] for p in pts], marker="o", ms=3.5, label=m["label"], **style)
        if metric == "adherence":
            ax.axhline(fam["full"]["adherence"], color="gray", ls="--", lw=1, label="full compute")
        if metric == "rel_l2":
            ax.set_yscale("log")
        if band is not None:
            ax.axvspan(*band, color="0.93", zorder=0)
        ax.set_xlabel("speedup (transformer FLOPs)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{family}: fidelity against speedup ({fam['steps']} steps, "
                 f"{len(fam['evaluation_prompts'])} held-out prompts)")
    fig.tight_layout()
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    os.chmod(path, 0o644)
    return path
