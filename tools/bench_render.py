"""Batch-rendering throughput (videos per hour) on 1 and 2 GPUs: 1 actor x SP 1, 2 actors x SP 1, 1 actor x SP 2.

    # on a 2-GPU machine: Wan2.1-1.3B config, random bf16 weights, 480x832x81, 50 steps, bridged N=6 with a
    # random rank-32 adapter set resident (compute does not depend on weight values); ~4-6 min per layout
    python tools/bench_render.py --layouts 1x1 2x1 1x2 --items 8 --out tools/results/bench_render_h100x2.json
    python tools/bench_render.py --model hunyuan-video          # HunyuanVideo config, 480x832x65
    python tools/bench_render.py --quick                        # CPU smoke test: tiny Wan, gloo ranks

Each layout renders the same prompts file (`--items` prompts, distinct seeds) into a fresh directory through
`lbdist.render.render`, i.e. Ray Data `map_batches` over an `ActorPoolStrategy(min_size=max_size=actors)` pool of
Generators (an SP-2 actor drives a 2-rank xfuser worker group in its own placement group). Measured on the driver
as records come back: wall time of the whole batch (actor start-up included) and the steady rate, items after
the first `actors` ones (every actor warm) over the time they took. Derived: videos/hour, scaling efficiency
from 1 to 2 GPUs for the better 2-GPU layout (issue 13's target: >= 1.85x), and the layout that
`lbdist.render.choose_layout` picks from the measured per-item times (the rule the code uses).

The JSON (card, commit, date, versions, settings, every layout) is written after each layout; a later call with
the same --out and other --layouts adds to it (so layouts can be split over device calls of at most 10 minutes).

Real-size models come from `lbdist.evaluate.realsize` (random weights, seeded, so every rank builds the same).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
LAYOUTS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}  # name -> (actors, sp_degree)
MODELS = {"wan-1.3b": "Wan2.1-T2V-1.3B config", "hunyuan-video": "HunyuanVideo config"}
TARGET_SCALING = 1.85


def random_adapters(model: str, quick: bool, schedule: str, steps: int, directory: Path) -> str:
    """A random rank-32 adapter set for every bridge of the schedule, saved to `directory` (built on the meta
    device for real-size configs: only the final block's shapes matter)."""
    import torch

    from lbdist import Schedule
    from lbdist.bridge import random_adapter_set

    if quick:
        from lbdist.generation.loading import load_pipeline

        transformer = load_pipeline(model, "cpu", "float32").pipe.transformer
    else:
        from lbdist.evaluate import realsize

        transformer = realsize.build_transformer(model, device="meta", dtype=torch.float32)
    random_adapter_set(transformer, Schedule.parse(schedule, steps)).save(directory)
    return str(directory)


def write_prompts(path: Path, items: int) -> None:
    words = "red green blue yellow circle square triangle left right up down".split()
    lines = [json.dumps({"prompt": f"a {words[i % 4]} {words[4 + i % 3]} moving {words[7 + i % 4]}", "seed": i})
             for i in range(items)]
    path.write_text("\n".join(lines) + "\n")


def run_layout(name: str, args, model, adapters: str, work: Path) -> dict:
    from lbdist.render import RenderConfig, render

    actors, sp = LAYOUTS[name]
    prompts, out = work / "prompts.jsonl", work / f"out-{name}"
    write_prompts(prompts, args.items)
    stamps: list[float] = []
    defaults = {"num_inference_steps": args.steps, "schedule": args.schedule, "adapters": adapters}
    if args.quick:
        defaults.update(height=16, width=16, num_frames=5)
    config = RenderConfig(actors=(actors, actors), sp_degree=sp, defaults=defaults, gpus=not args.quick,
                          dtype="float32" if args.quick else "bfloat16", log_every_s=60,
                          worker={"verify_weights": False, "call_timeout_s": 1800})
    started = time.monotonic()
    report = render(str(prompts), str(out), model, config, on_record=lambda r: stamps.append(time.monotonic()))
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    item_s = [r["timings"]["item"] for r in records if r["status"] == "ok"]
    steady = (len(stamps) - actors) / (stamps[-1] - stamps[actors - 1]) if len(stamps) > actors else float("nan")
    return {"layout": name, "actors": actors, "sp_degree": sp, "gpus": actors * sp, "items": len(records),
            "rendered": report.rendered, "failed": report.failed, "wall_s": round(time.monotonic() - started, 2),
            "videos_per_hour_wall": round(3600 * report.rendered / (time.monotonic() - started), 2),
            "videos_per_hour_steady": round(3600 * steady, 2),
            "item_s_median": round(statistics.median(item_s), 3) if item_s else None,
            "transformer_s_median": round(statistics.median(r["timings"].get("transformer", 0) for r in records
                                                            if r["status"] == "ok"), 3) if item_s else None,
            "calls": records[0].get("calls") if records else None}


def derive(report: dict, args) -> None:
    """Scaling efficiency and the layout rule's pick from the measured layouts (when they are all there)."""
    from lbdist.render import ModelFootprint, choose_layout

    rows = report["layouts"]
    if "1x1" not in rows or not {"2x1", "1x2"} & set(rows):
        return
    one = rows["1x1"]["videos_per_hour_steady"]
    two = {k: rows[k]["videos_per_hour_steady"] for k in ("2x1", "1x2") if k in rows}
    best = max(two, key=two.get)
    scaling = two[best] / one if one else float("nan")
    report["scaling"] = {"best_2gpu_layout": best, "speedup_1_to_2_gpus": round(scaling, 3),
                         "per_layout": {k: round(v / one, 3) for k, v in two.items()},
                         "target": TARGET_SCALING, "met": bool(scaling >= TARGET_SCALING) and not args.quick}
    t1 = rows["1x1"]["item_s_median"]
    efficiency = {2: t1 / rows["1x2"]["item_s_median"] / 2} if "1x2" in rows else {}
    footprint = ModelFootprint(heads=report["model"]["heads"], tokens=report["model"]["tokens"],
                               weights_gib=report["model"]["weights_gib"], seconds_per_item=t1)
    layout = choose_layout(gpus=2, model=footprint, items=args.items, gpu_memory_gib=report["gpu_memory_gib"],
                           efficiency=efficiency, min_tokens_per_rank=1 if args.quick else 1024)
    pick = f"{layout.actors}x{layout.sp_degree}"
    report["rule"] = {"pick": pick, "reason": layout.reason, "measured_best": best, "agrees": pick == best,
                      "efficiency_used": efficiency}


def model_facts(model: str, quick: bool) -> dict:
    """Heads, latent tokens per item and weight size (GiB, bf16) of the benchmarked transformer."""
    if quick:
        return {"name": model, "heads": 2, "tokens": 8, "weights_gib": 0.0}
    import torch

    from lbdist.evaluate import realsize

    transformer = realsize.build_transformer(model, device="meta", dtype=torch.bfloat16)
    params = sum(p.numel() for p in transformer.parameters())
    _, size = realsize.lookup(model)
    return {"name": model, "description": MODELS[model], "shape": size.label(),
            "heads": int(size.config["num_attention_heads"]), "tokens": realsize.latent_tokens(model),
            "weights_gib": round(params * 2 / 2**30, 2)}


def environment(quick: bool) -> dict:
    from lbdist.evaluate.timing import environment as record

    return {"benchmark": "bench_render", "quick": quick, **record("diffusers", "ray")}


def write(report: dict, path: Path) -> None:
    from lbdist.evaluate.timing import write_json

    write_json(path, report)


def table(report: dict) -> str:
    lines = ["layout  GPUs  videos/h steady  videos/h wall  item s (median)  failed"]
    for row in report["layouts"].values():
        lines.append(f"{row['layout']:6}  {row['gpus']:4}  {row['videos_per_hour_steady']:15.1f}  "
                     f"{row['videos_per_hour_wall']:13.1f}  {row['item_s_median']:15.3f}  {row['failed']:6}")
    if "scaling" in report:
        s = report["scaling"]
        lines.append(f"1 -> 2 GPUs: {s['speedup_1_to_2_gpus']:.2f}x ({s['best_2gpu_layout']}); target "
                     f">= {s['target']}x: {'met' if s['met'] else 'not met' if not report['quick'] else 'n/a (CPU)'}")
    if "rule" in report:
        lines.append(f"choose_layout picks {report['rule']['pick']} (measured best {report['rule']['measured_best']})"
                     f": {report['rule']['reason']}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wan-1.3b", choices=sorted(MODELS))
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--items", type=int, default=None, help="videos per layout (default 8; --quick 6)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; --quick 8)")
    p.add_argument("--schedule", default="6", help="bridge schedule (default N=6)")
    p.add_argument("--no-adapters", action="store_true", help="uncalibrated bridge (no LoRA) instead of random adapters")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny Wan, CPU actors, gloo ranks")
    p.add_argument("--out", default=None, help="JSON path (default tools/results/bench_render_<card>.json)")
    args = p.parse_args(argv)
    args.items = args.items or (6 if args.quick else 8)
    args.steps = args.steps or (8 if args.quick else 50)
    if args.quick and args.schedule == "6":
        args.schedule = "3"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    env = environment(args.quick)
    slug = "quick_cpu" if args.quick else env["card"].lower().replace("nvidia ", "").split()[0]
    out = Path(args.out or TOOLS / "results" / f"bench_render_{slug}.json")
    report = json.loads(out.read_text()) if out.exists() else {}
    settings = {"model": args.model if not args.quick else "tiny:wan", "items": args.items, "steps": args.steps,
                "schedule": args.schedule, "adapters": "none" if args.no_adapters else "random rank 32"}
    if report.get("settings") != settings:
        report = {"settings": settings, "layouts": {}}
    report.update(environment=env, model=model_facts(args.model, args.quick),
                  gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                  if torch.cuda.is_available() else 24.0, quick=args.quick)
    ray.init(num_cpus=3 if args.quick else None, include_dashboard=False)
    from lbdist.parallel.config import PipelineFactory

    model = "tiny:wan" if args.quick else PipelineFactory("lbdist.evaluate.realsize:realsize_pipeline",
                                                           {"name": args.model})
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        adapters = None if args.no_adapters else random_adapters(settings["model"] if args.quick else args.model,
                                                                 args.quick, args.schedule, args.steps, Path(tmp) / "set")
        for name in args.layouts:
            report["layouts"][name] = run_layout(name, args, model, adapters, Path(tmp))
            derive(report, args)
            write(report, out)
            print(f"{name}: {report['layouts'][name]}", flush=True)
    ray.shutdown()
    print(table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
