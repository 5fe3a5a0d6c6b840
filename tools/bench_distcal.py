"""Distributed calibration benchmarks: GPU scaling and memory (`gpu`), and the cost cut on the toys (`costcut`).

    # GPU (a later session): Wan2.1-1.3B config at 480x832x81, 5 prompts, N=5; recording and training wall
    # time on 1 and 2 GPUs and the scaling efficiency; peak memory per GPU with and without ZeRO-2 for all
    # bridges of Wan2.1-14B trained together. JSON is written after every phase.
    python tools/bench_distcal.py gpu --out tools/results/bench_distcal_h100.json
    python tools/bench_distcal.py gpu --quick --out /tmp/bench_distcal_quick.json     # the same code on the CPU

    # CPU: calibration cost at equal held-out error on a bundled toy (single-process trainer, which the
    # distributed one reproduces bridge for bridge; tests/test_zero.py)
    python tools/bench_distcal.py costcut --family hunyuan_video --interval 6 --cap 1000 \
        --out tools/results/distcal_costcut_hunyuan_toy.json

`gpu` runs everything through lbdist.distributed: worker groups record (`record_prompt`), Ray Train +
DeepSpeed train (`train_loop`), on a Ray cluster it starts itself on this machine (`ray.init`). Recording is
cut after `--record-steps` steps per prompt (the pipeline's interrupt flag) to fit device time; full-schedule
figures are extrapolated linearly (the step cost is constant) and labelled so. Training runs a fixed number of
epochs over the bridges recorded; all-bridge figures are extrapolated by bridge count and labelled so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict:
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"card": card, "gpus": torch.cuda.device_count(), "commit": commit, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count()}


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)


# --- costcut ------------------------------------------------------------------------------------------------

VARIANTS = {
    # name: (TrainConfig overrides, warm start, what it is)
    "reference": (dict(max_epochs=None, patience=10**6), False, "family lr, the epoch cap, no early stopping"),
    "early_stop": (dict(max_epochs=None), False, "early stopping on the training loss (eval 25, patience 4, 1%)"),
    "early_stop_warm": (dict(max_epochs=None), True, "early stopping + warm start from the neighbouring bridge"),
    "early_stop_fast_warm": (dict(max_epochs=None, eval_every=10, patience=2), True,
                             "early stopping every 10 epochs, patience 2, + warm start"),
    "epochs_50": (dict(max_epochs=50, patience=10**6), False, "50 epochs, no early stopping"),
    "epochs_25_warm": (dict(max_epochs=25, patience=10**6), True, "25 epochs + warm start"),
}


def _latents(pipe, prompt: str, seed: int, steps: int, call: dict):
    import torch

    out = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
               output_type="latent", **call)
    return (out.frames if hasattr(out, "frames") else out.images).detach().float()


def _heldout_errors(pipe, schedule, adapters, prompts, seeds, steps, call, references) -> list[float]:
    from lbdist.bridge import BridgeConfig, apply_bridge, remove_bridge

    errors = []
    for prompt, seed in zip(prompts, seeds):
        if (prompt, seed) not in references:
            remove_bridge(pipe)
            references[prompt, seed] = _latents(pipe, prompt, seed, steps, call)
        apply_bridge(pipe, config=BridgeConfig(schedule, adapters=adapters))
        out = _latents(pipe, prompt, seed, steps, call)
        remove_bridge(pipe)
        ref = references[prompt, seed]
        errors.append(float((out - ref).norm() / ref.norm()))
    return errors


def _train_variant(pipe, pairs_dir, config, warm: bool, manifest: dict):
    """Every bridge of the recording, in step order per branch; warm: each starts from its neighbour, the bridge
    one step before it from the same anchor (bridges right after an anchor start fresh), as `--warm-start` does in
    the distributed job (tests/test_zero.py shows that trainer equal to this one)."""
    from lbdist.bridge import AdapterSet, LoraSettings, Schedule
    from lbdist.calibrate.store import read_index
    from lbdist.calibrate.trainer import bridge_seed, load_pairs, train_bridge
    from lbdist.models import get_spec

    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    entries = read_index(pairs_dir)
    bridges = sorted({(e["step"], e["branch"]) for e in entries}, key=lambda b: (b[1], b[0]))
    adapters = AdapterSet(spec.family, spec.transformer_class.__name__, manifest["config_digest"],
                          Schedule.from_dict(manifest["schedule"]), tuple(sorted({b for _, b in bridges})),
                          LoraSettings(config.rank, config.alpha, spec.lora_targets), extra={"training": {}})
    previous, totals = {}, {"pair_passes": 0, "forward_passes": 0, "seconds": 0.0, "epochs": []}
    for step, branch in bridges:
        pairs = load_pairs(pairs_dir, step, branch)
        neighbour = previous.get((step - 1, branch)) if warm else None
        state, info = train_bridge(final, spec, pairs, [], config, spec.lora_targets,
                                   seed=bridge_seed(config.seed, step, branch), init=neighbour)
        previous[(step, branch)] = state
        adapters.weights[(step, branch)] = state
        totals["pair_passes"] += info["epochs_run"] * len(pairs)
        totals["forward_passes"] += len(pairs)  # the epoch-0 evaluation (training loss is watched: no extra)
        totals["seconds"] += info["seconds"]
        totals["epochs"].append(info["epochs_run"])
    return adapters, totals


def costcut(args) -> int:
    import torch

    from lbdist.bridge import Schedule
    from lbdist.calibrate import RecordConfig, TrainConfig, record_pairs
    from lbdist.calibrate.store import read_manifest
    from lbdist.toy import load_toy
    from lbdist.toy.dataset import calibration_prompts, evaluation_prompts

    torch.set_num_threads(args.threads)
    toy = load_toy(args.family)
    pipe, defaults = toy.pipe, dict(toy.defaults)
    pipe.set_progress_bar_config(disable=True)
    steps = int(defaults.pop("num_inference_steps", 50))
    call, kind = defaults, ("image" if args.family == "flux" else "video")
    schedule = Schedule.periodic(steps, args.interval)
    calib, seeds = calibration_prompts(kind, args.calibration_prompts), tuple(range(args.calibration_prompts))
    held = evaluation_prompts(kind)[:args.heldout]
    held_seeds = tuple(100 + i for i in range(len(held)))  # other seeds than calibration: users send any seed
    work = Path(args.work)
    record_pairs(pipe, schedule, RecordConfig(tuple(calib), seeds, call), work / "pairs", progress=False)
    manifest = read_manifest(work / "pairs")
    out = Path(args.out)
    report = {"benchmark": "distcal_costcut", **environment(), "family": args.family, "model": f"toy:{args.family}",
              "steps": steps, "interval": args.interval, "epoch_cap": args.cap, "lr": args.lr,
              "calibration_prompts": calib, "heldout_prompts": held, "heldout_seeds": list(held_seeds),
              "threads": args.threads, "metric": "relative L2 of the final latents against full compute, mean over "
              "the held-out prompts", "variants": {}}
    references: dict = {}
    uncal = _heldout_errors(pipe, schedule, None, held, held_seeds, steps, call, references)
    report["uncalibrated"] = {"heldout": uncal, "heldout_mean": sum(uncal) / len(uncal)}
    write(report, out)
    for name in args.variants:
        overrides, warm, what = VARIANTS[name]
        overrides = {**overrides, "max_epochs": overrides["max_epochs"] or args.cap}
        config = TrainConfig(lr=args.lr, refit=False, **overrides).resolved(args.family)
        began = time.process_time()
        adapters, totals = _train_variant(pipe, work / "pairs", config, warm, manifest)
        cpu = time.process_time() - began
        errors = _heldout_errors(pipe, schedule, adapters, held, held_seeds, steps, call, references)
        report["variants"][name] = {"what": what, "warm_start": warm, "config": {k: getattr(config, k) for k in (
            "lr", "max_epochs", "eval_every", "patience", "min_delta", "rank", "alpha")},
            "pair_passes": totals["pair_passes"], "forward_passes": totals["forward_passes"],
            "train_seconds": round(totals["seconds"], 1), "cpu_seconds": round(cpu, 1),
            "epochs_mean": sum(totals["epochs"]) / len(totals["epochs"]), "epochs_max": max(totals["epochs"]),
            "heldout": errors, "heldout_mean": sum(errors) / len(errors)}
        _relative(report)
        write(report, out)
        print(name, json.dumps(report["variants"][name])[:400], flush=True)
    return 0


def _relative(report: dict) -> None:
    ref = report["variants"].get("reference")
    if not ref:
        return
    for v in report["variants"].values():
        v["compute_vs_reference"] = round(v["pair_passes"] / ref["pair_passes"], 4)
        v["cpu_seconds_vs_reference"] = round(v["cpu_seconds"] / max(ref["cpu_seconds"], 1e-9), 4)
        v["heldout_vs_reference"] = round(v["heldout_mean"] / ref["heldout_mean"], 4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("costcut", help="calibration cost at equal held-out error on a bundled toy (CPU)")
    c.add_argument("--family", default="hunyuan_video", choices=("wan", "hunyuan_video", "flux"))
    c.add_argument("--interval", type=int, default=6)
    c.add_argument("--cap", type=int, default=1000, help="epoch cap of the reference recipe (5000 capped)")
    c.add_argument("--lr", type=float, default=None, help="default: the family's recipe rate")
    c.add_argument("--calibration-prompts", type=int, default=3)
    c.add_argument("--heldout", type=int, default=3)
    c.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--work", default="/tmp/lbdist-costcut")
    c.add_argument("--out", required=True)
    c.set_defaults(func=costcut)
    g = sub.add_parser("gpu", help="recording / training scaling and ZeRO-2 memory (GPU; --quick on the CPU)")
    _gpu_args(g)
    args = p.parse_args(argv)
    return args.func(args)


# --- gpu -----------------------------------------------------------------------------------------------------

PROMPTS = ["a red circle moves left", "a blue square moves up", "a green triangle moves right",
           "a yellow circle moves down", "a red square moves right"]


def _gpu_args(g) -> None:
    g.add_argument("--quick", action="store_true", help="tiny Wan on CPU workers (gloo): the same code, seconds")
    g.add_argument("--model", default="wan-1.3b", help="realsize config for recording and training")
    g.add_argument("--memory-model", default="wan-14b", help="realsize config for the ZeRO-2 memory phase")
    g.add_argument("--prompts", type=int, default=5)
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--interval", type=int, default=5)
    g.add_argument("--record-steps", type=int, default=10, help="steps recorded per prompt (then extrapolated)")
    g.add_argument("--epochs", type=int, default=20, help="fixed epochs per training run")
    g.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    g.add_argument("--phases", nargs="+", default=["record", "train", "memory"])
    g.add_argument("--work", default="/tmp/lbdist-bench-distcal")
    g.add_argument("--out", required=True)
    g.set_defaults(func=gpu)


def _quick(args) -> None:
    if args.quick:
        args.model = args.memory_model = "tiny-wan"
        args.prompts, args.steps, args.interval, args.record_steps, args.epochs = 2, 8, 4, 8, 3


def _save_model(name: str, folder: Path, device: str) -> dict:
    """The realsize pipeline with seeded random weights, saved as a diffusers folder every worker loads."""
    import torch
    from realsize import SHAPES, bench_pipeline, call_kwargs

    shape = SHAPES[name]
    if not (folder / "model_index.json").is_file():
        torch.manual_seed(0)
        pipe = bench_pipeline(name, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        pipe.save_pretrained(str(folder))
        calls = call_kwargs(name, shape)
        (folder / "lbdist_defaults.json").write_text(json.dumps(calls))
        del pipe
    return json.loads((folder / "lbdist_defaults.json").read_text())


def _job(args, folder: Path, run_id: str, workers: int, sp: int, **extra):
    from lbdist.calibrate import TrainConfig
    from lbdist.distributed.config import CalibrationJob

    train = TrainConfig(lr=1e-4, max_epochs=args.epochs, patience=10**6, eval_every=args.epochs, refit=False)
    return CalibrationJob(family="wan", model=str(folder), prompts=tuple(PROMPTS[:args.prompts]),
                          schedule=str(args.interval), steps=args.steps, output=str(Path(args.work) / "runs"),
                          run_id=run_id, workers=workers, sp_degree=sp, train=train, dtype="auto", **extra)


def _record_layout(args, folder: Path, gpu: bool, workers: int, sp: int) -> dict:
    from lbdist.distributed.layout import RunLayout, clear_run
    from lbdist.distributed.pool import _start_groups
    from lbdist.distributed.progress import Progress
    from lbdist.distributed.record import describe_model, record_all

    job = _job(args, folder, f"record-{workers}w-sp{sp}", workers, sp)
    layout = RunLayout.of(job.output, job.run_id)
    clear_run(layout)
    began = time.perf_counter()
    groups = _start_groups(job, sp, gpu)
    started = time.perf_counter() - began
    try:
        description = groups[0].run(describe_model, {"prompt": PROMPTS[0], "height": None, "width": None,
                                                     "frames": None, "steps": args.steps, "guidance": None,
                                                     "schedule": job.schedule})[0]
        from lbdist.distributed.layout import write_json

        write_json(layout.path("pairs", "manifest.json"), {**description, "schedule": job.parsed_schedule().to_dict(),
                                                            "prompts": list(job.prompts), "seeds": list(job.seeds)})
        t = time.perf_counter()
        record_all(job, layout, groups, description, Progress(job.run_id), lambda: False, stop_after=args.record_steps)
        seconds = time.perf_counter() - t
    finally:
        for group in groups:
            group.shutdown()
    steps = args.prompts * args.record_steps
    return {"workers": workers, "sp_degree": sp, "groups": workers // sp, "group_start_s": round(started, 1),
            "seconds": round(seconds, 2), "steps_recorded": steps, "seconds_per_step": round(seconds / steps, 4),
            "extrapolated_all_steps_s": round(seconds / steps * args.prompts * args.steps, 1),
            "extrapolated_note": f"{args.record_steps} of {args.steps} steps recorded per prompt; the full schedule "
                                 "is extrapolated linearly", "run": layout.root}


def _train_workers(args, folder: Path, gpu: bool, workers: int, recording: str) -> dict:
    from lbdist.distributed.layout import RunLayout, clear_run, read_json
    from lbdist.distributed.progress import Progress, StopSignal
    from lbdist.distributed.record import verify
    from lbdist.distributed.train import train_all

    job = _job(args, folder, f"train-{workers}w", workers, 1)
    layout = RunLayout.of(job.output, job.run_id)
    clear_run(layout)
    Path(layout.root).mkdir(parents=True)
    os.symlink(Path(recording) / "pairs", Path(layout.root) / "pairs")  # the recording, not a copy (tens of GB)
    description = read_json(layout.path("pairs", "manifest.json"))
    entries, _ = verify(layout, full=False)
    t = time.perf_counter()
    counts = train_all(job, layout, description, entries, Progress(job.run_id), StopSignal(), gpu)
    wall = time.perf_counter() - t
    infos = [read_json(layout.path("bridges", n)) for n in sorted(os.listdir(Path(layout.root) / "bridges"))
             if n.endswith(".json")]
    loop = max(i["seconds"] for i in infos)
    bridges, all_bridges = counts["total"], len(job.parsed_schedule().bridged_steps) * 2
    return {"workers": workers, "bridges": bridges, "epochs": args.epochs, "pairs": sum(len(v) for v in entries.values()),
            "training_loop_s": round(loop, 2), "seconds_per_epoch": round(loop / args.epochs, 4), "wall_s": round(wall, 1),
            "extrapolated_all_bridges_s_per_epoch": round(loop / args.epochs * all_bridges / bridges, 3),
            "note": f"{bridges} bridges recorded ({args.record_steps} of {args.steps} steps); all {all_bridges} "
                    "bridges extrapolated by bridge count"}


def _memory_loop(config: dict) -> None:
    """On each training worker: every bridge of the schedule on the final block of `config['model']` (random,
    one block), one synthetic pair at the real shape, a few epochs; reports every rank's peak memory."""
    import ray.train
    import torch

    from lbdist.calibrate import TrainConfig
    from lbdist.calibrate.zero import ZeroSettings, zero_engine
    from lbdist.calibrate.trainer import Pair
    from lbdist.distributed.joint import BridgePlan, JointFit, LocalPair
    from lbdist.distributed.lora import RoutedBlock, initial_state
    from lbdist.models import get_spec
    from realsize import CONFIGS, SHAPES, build, step_inputs

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    family, cfg = CONFIGS[config["model"]]
    CONFIGS["one-block"] = (family, {**cfg, "num_layers": 1})
    transformer = build("one-block", device=device, dtype=dtype)
    spec = get_spec(transformer)
    final, seen = spec.final_block(transformer), {}
    from lbdist.calibrate.objective import block_args

    handle = final.register_forward_hook(lambda m, a, kw, out: seen.update(bound=block_args(m).bind(a, kw)),
                                         with_kwargs=True)
    latents, make = step_inputs(config["model"], SHAPES[config["model"]], device=device, dtype=dtype)
    with torch.no_grad():
        transformer(**make(latents, 0.5))
    handle.remove()
    stream = {n: seen["bound"].pop(n) for n in spec.stream_names}
    pair = Pair(0, stream, seen["bound"], torch.randn_like(stream["hidden_states"]))
    train = TrainConfig(max_epochs=config["epochs"], patience=10**6, eval_every=config["epochs"],
                        refit=False).resolved(family)
    bridges = [(s, b) for s in range(1, config["bridges"] + 1) for b in ("cond",)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    plans = [BridgePlan(b, i, world, 0, train.max_epochs) for i, b in enumerate(bridges)]
    routed = RoutedBlock(final, spec.lora_targets, bridges, train.rank, train.alpha,
                         [initial_state(final, train, spec.lora_targets, 0)] * len(bridges)).to(device)
    engine = zero_engine(routed, [routed.bridge_parameters(i) for i in range(len(bridges))],
                         ZeroSettings(lr=train.lr, bf16=cuda, stage=config["stage"]))
    mine = [LocalPair(i, pair) for i in range(len(bridges)) if i % world == rank]
    JointFit(routed, engine, spec, train, plans, mine).run()
    import resource

    value = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = torch.tensor([value / 2**30], device=device, dtype=torch.float64)
    peaks = [torch.zeros_like(peak) for _ in range(world)]
    torch.distributed.all_gather(peaks, peak)
    if rank == 0:  # the driver reads it back (Ray Train keeps metrics only with checkpoints)
        Path(config["out"]).write_text(json.dumps([round(float(p), 3) for p in peaks]))


def _memory(args, gpu: bool, stage: int, workers: int) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from realsize import SHAPES, latent_tokens

    bridges = len([s for s in range(args.steps) if s % args.interval]) * 2
    peaks = Path(args.work) / f"memory-stage{stage}.json"
    trainer = TorchTrainer(_memory_loop, train_loop_config={"model": args.memory_model, "stage": stage,
                                                            "epochs": 2, "bridges": bridges, "out": str(peaks)},
                           torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
                           run_config=RunConfig(name=f"memory-stage{stage}", storage_path=str(Path(args.work) / "ray")))
    trainer.fit()
    return {"model": args.memory_model, "tokens": latent_tokens(args.memory_model, SHAPES[args.memory_model]),
            "bridges": bridges, "lora_rank": 32, "zero_stage": stage, "workers": workers,
            "peak_gb_per_rank": json.loads(peaks.read_text()),
            "measure": "torch.cuda.max_memory_allocated" if gpu else "process peak RSS (CPU --quick)",
            "note": "one synthetic pair shared by every bridge of a rank (the recording's pairs add their own bytes)"}


def gpu(args) -> int:
    import ray
    import torch

    _quick(args)
    cuda = torch.cuda.is_available() and not args.quick
    out, folder = Path(args.out), Path(args.work) / args.model
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])
    report = {"benchmark": "bench_distcal", **environment(), "quick": args.quick, "model": args.model,
              "memory_model": args.memory_model, "prompts": args.prompts, "steps": args.steps,
              "interval": args.interval, "phases": {}}
    t = time.perf_counter()
    report["call"] = _save_model(args.model, folder, "cuda" if cuda else "cpu")
    report["build_s"] = round(time.perf_counter() - t, 1)
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
             **({} if cuda else {"num_cpus": max(2, max(args.gpus))}))
    phases = report["phases"]
    if "record" in args.phases:
        layouts = [(w, sp) for w in args.gpus for sp in sorted({1, w})]
        phases["record"] = []
        for w, sp in layouts:
            phases["record"].append(_record_layout(args, folder, cuda, w, sp))
            write(report, out)
            if len(phases["record"]) > 1:  # only the first recording is trained on: free the disk
                import shutil

                shutil.rmtree(phases["record"][-1]["run"], ignore_errors=True)
        base = phases["record"][0]["seconds"]
        for r in phases["record"]:
            r["speedup_vs_1"] = round(base / r["seconds"], 3)
            r["scaling_efficiency"] = round(base / r["seconds"] / r["workers"], 3)
        write(report, out)
    if "train" in args.phases:
        recording = phases["record"][0]["run"] if "record" in phases else str(Path(args.work) / "runs" / "record-1w-sp1")
        phases["train"] = []
        for w in args.gpus:
            phases["train"].append(_train_workers(args, folder, cuda, w, recording))
            write(report, out)
        base = phases["train"][0]["training_loop_s"]
        for r in phases["train"]:
            r["speedup_vs_1"] = round(base / r["training_loop_s"], 3)
            r["scaling_efficiency"] = round(base / r["training_loop_s"] / r["workers"], 3)
        write(report, out)
    if "memory" in args.phases:
        phases["memory"] = []
        for stage in (0, 2):
            phases["memory"].append(_memory(args, cuda, stage, max(args.gpus)))
            write(report, out)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
