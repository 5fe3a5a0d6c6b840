"""Issue 12's benchmark logic (`tools/bench_distcal.py` runs it): the cost cut of calibration on a bundled toy
(`run_costcut`, CPU) and distributed calibration's scaling and memory on GPUs (`run_gpu`; `quick` on the CPU).

costcut: record the toy's calibration prompts once, then train every bridge under each variant of `VARIANTS`
with the single-process trainer and the paper recipe (hidden-state objective, cached input), which is what the
distributed job runs and reproduces bridge for bridge (tests/test_zero.py). Variants: the reference (the family's
rate for a fixed number of epochs), early stopping, warm start from the neighbouring bridge, fewer epochs. Every
variant's adapters are scored on held-out prompts and seeds (relative L2 of the final latents against full
compute). Cost = pair passes (epochs x pairs) and CPU seconds, against the reference.

gpu: everything through lbdist.distributed on a Ray cluster started on this machine: worker groups record
(`record_all`, cut after `record_steps` steps per prompt, full-schedule figures extrapolated linearly and labelled
so), Ray Train + DeepSpeed train a fixed number of epochs on 1..n workers (all-bridge figures extrapolated by bridge
count), and every bridge of `memory_model` trained together on its final block with ZeRO stage 0 and 2 (peak
memory per rank). Models are `lbdist.evaluate.realsize` sizes with seeded random weights, saved once as a diffusers
folder every worker loads. Reports are written after every variant / phase (`timing.write_json`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .timing import environment, write_json

# name: (TrainConfig overrides, warm start, what it is); max_epochs None = the settings' cap
VARIANTS = {
    "reference": (dict(max_epochs=None, patience=10**6), False, "family lr, the epoch cap, no early stopping"),
    "early_stop": (dict(max_epochs=None), False, "early stopping on the training loss (eval 25, patience 4, 1%)"),
    "early_stop_warm": (dict(max_epochs=None), True, "early stopping + warm start from the neighbouring bridge"),
    "early_stop_fast_warm": (dict(max_epochs=None, eval_every=10, patience=2), True,
                             "early stopping every 10 epochs, patience 2, + warm start"),
    "epochs_50": (dict(max_epochs=50, patience=10**6), False, "50 epochs, no early stopping"),
    "epochs_25_warm": (dict(max_epochs=25, patience=10**6), True, "25 epochs + warm start"),
}
PROMPTS = ("a red circle moves left", "a blue square moves up", "a green triangle moves right",
           "a yellow circle moves down", "a red square moves right")
PHASES = ("record", "train", "memory")


@dataclass(frozen=True)
class CostCutSettings:
    """One cost-cut measurement (`tools/bench_distcal.py costcut`).

    family: bundled toy (`toy:<family>`); interval: periodic schedule N over the toy's steps.
    cap: epochs of the reference recipe and cap of the others (the families' recipes say 5000 for HunyuanVideo and
        Wan; a lower cap only makes the reference cheaper, so the ratios against it are conservative).
    lr: None takes the family's recipe rate. calibration_prompts, heldout: how many of the toy data set's
        calibration / evaluation prompts (held-out seeds are 100, 101, ...).
    variants: names from `VARIANTS`; threads: torch intra-op threads; work: folder for the recording.
    """

    family: str = "hunyuan_video"
    interval: int = 6
    cap: int = 1000
    lr: float | None = None
    calibration_prompts: int = 3
    heldout: int = 3
    variants: tuple[str, ...] = tuple(VARIANTS)
    threads: int = 1
    work: str = "/tmp/lbdist-costcut"

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
        if type(self.cap) is not int or self.cap < 1:
            raise ValueError(f"cap must be an integer >= 1, got {self.cap!r}")


def _latents(pipe, prompt: str, seed: int, steps: int, call: dict):
    import torch

    out = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
               output_type="latent", **call)
    return (out.frames if hasattr(out, "frames") else out.images).detach().float()


def heldout_errors(pipe, schedule, adapters, prompts, seeds, steps, call, references: dict) -> list[float]:
    """Relative L2 of bridged sampling (with `adapters`, or none) against full compute, per (prompt, seed);
    `references` caches the full-compute latents across calls."""
    from ..bridge import BridgeConfig, apply_bridge, remove_bridge

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


def train_variant(pipe, pairs_dir, config, warm: bool, manifest: dict):
    """Every bridge of the recording, in step order per branch; warm: each starts from its neighbour, the bridge
    one step before it from the same anchor (bridges right after an anchor start fresh), as `--warm-start` does in
    the distributed job. Returns (adapter set, cost totals)."""
    from ..bridge import AdapterSet, LoraSettings, Schedule
    from ..calibrate.store import read_index
    from ..calibrate.trainer import bridge_seed, load_pairs, train_bridge
    from ..models import get_spec

    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    bridges = sorted({(e["step"], e["branch"]) for e in read_index(pairs_dir)}, key=lambda b: (b[1], b[0]))
    adapters = AdapterSet(spec.family, spec.transformer_class.__name__, manifest["config_digest"],
                          Schedule.from_dict(manifest["schedule"]), tuple(sorted({b for _, b in bridges})),
                          LoraSettings(config.rank, config.alpha, spec.lora_targets), extra={"training": {}})
    previous, totals = {}, {"pair_passes": 0, "forward_passes": 0, "seconds": 0.0, "epochs": []}
    for step, branch in bridges:
        pairs = load_pairs(pairs_dir, step, branch)
        neighbour = previous.get((step - 1, branch)) if warm else None
        state, info = train_bridge(final, spec, pairs, [], config, spec.lora_targets,
                                   seed=bridge_seed(config.seed, step, branch), init=neighbour)
        previous[(step, branch)] = adapters.weights[(step, branch)] = state
        totals["pair_passes"] += info["epochs_run"] * len(pairs)
        totals["forward_passes"] += len(pairs)  # the epoch-0 evaluation (the training loss is watched: no extra)
        totals["seconds"] += info["seconds"]
        totals["epochs"].append(info["epochs_run"])
    return adapters, totals


def _toy(settings: CostCutSettings):
    from ..bridge import Schedule
    from ..toy import load_toy
    from ..toy.dataset import calibration_prompts, evaluation_prompts

    toy = load_toy(settings.family)
    pipe, call = toy.pipe, dict(toy.defaults)
    pipe.set_progress_bar_config(disable=True)
    steps = int(call.pop("num_inference_steps", 50))
    kind = "image" if settings.family == "flux" else "video"
    calib = tuple(calibration_prompts(kind, settings.calibration_prompts))
    held = tuple(evaluation_prompts(kind)[:settings.heldout])
    return pipe, call, steps, Schedule.periodic(steps, settings.interval), calib, held


def run_costcut(settings: CostCutSettings, out: str | os.PathLike, log=print) -> dict:
    """Record once, train every variant, score each on the held-out prompts; the report is rewritten at `out`
    after each variant and returned."""
    import torch

    from ..calibrate import RecordConfig, TrainConfig, record_pairs
    from ..calibrate.store import read_manifest

    torch.set_num_threads(settings.threads)
    pipe, call, steps, schedule, calib, held = _toy(settings)
    seeds, held_seeds = tuple(range(len(calib))), tuple(100 + i for i in range(len(held)))  # users send any seed
    pairs = Path(settings.work) / "pairs"
    began = time.process_time()
    record_pairs(pipe, schedule, RecordConfig(calib, seeds, call), pairs, progress=False)
    manifest = read_manifest(pairs)
    report = {"benchmark": "distcal_costcut", **environment(), "cpus": os.cpu_count(), "family": settings.family,
              "model": f"toy:{settings.family}", "steps": steps, "interval": settings.interval,
              "epoch_cap": settings.cap, "lr": settings.lr, "calibration_prompts": list(calib),
              "heldout_prompts": list(held), "heldout_seeds": list(held_seeds), "threads": settings.threads,
              "recording_cpu_seconds": round(time.process_time() - began, 1),
              "metric": "relative L2 of the final latents against full compute, mean over the held-out prompts "
                        "(calibration_*: the same on the calibration prompts and seeds, i.e. in-sample fit)",
              "variants": {}}
    references: dict = {}
    uncal = heldout_errors(pipe, schedule, None, held, held_seeds, steps, call, references)
    fit = heldout_errors(pipe, schedule, None, calib, seeds, steps, call, references)
    report["uncalibrated"] = {"heldout": uncal, "heldout_mean": sum(uncal) / len(uncal),
                              "calibration": fit, "calibration_mean": sum(fit) / len(fit)}
    write_json(out, report, indent=1)
    for name in settings.variants:
        overrides, warm, what = VARIANTS[name]
        overrides = {**overrides, "max_epochs": overrides["max_epochs"] or settings.cap}
        config = TrainConfig(recipe="paper", lr=settings.lr, refit=False, **overrides).resolved(settings.family)
        began = time.process_time()
        adapters, totals = train_variant(pipe, pairs, config, warm, manifest)
        cpu = time.process_time() - began
        errors = heldout_errors(pipe, schedule, adapters, held, held_seeds, steps, call, references)
        fit = heldout_errors(pipe, schedule, adapters, calib, seeds, steps, call, references)
        report["variants"][name] = {
            "what": what, "warm_start": warm,
            "config": {k: getattr(config, k) for k in ("recipe", "lr", "max_epochs", "eval_every", "patience",
                                                       "min_delta", "rank", "alpha")},
            "pair_passes": totals["pair_passes"], "forward_passes": totals["forward_passes"],
            "train_seconds": round(totals["seconds"], 1), "cpu_seconds": round(cpu, 1),
            "epochs_mean": sum(totals["epochs"]) / len(totals["epochs"]), "epochs_max": max(totals["epochs"]),
            "heldout": errors, "heldout_mean": sum(errors) / len(errors),
            "calibration": fit, "calibration_mean": sum(fit) / len(fit)}
        relative(report)
        write_json(out, report, indent=1)
        log(f"{name}: {json.dumps(report['variants'][name])[:400]}")
    return report


def relative(report: dict) -> None:
    """Each variant's cost and held-out error as fractions of the reference's (when the reference ran)."""
    ref = report["variants"].get("reference")
    if not ref:
        return
    for v in report["variants"].values():
        v["compute_vs_reference"] = round(v["pair_passes"] / ref["pair_passes"], 4)
        v["cpu_seconds_vs_reference"] = round(v["cpu_seconds"] / max(ref["cpu_seconds"], 1e-9), 4)
        v["heldout_vs_reference"] = round(v["heldout_mean"] / ref["heldout_mean"], 4)
        if "calibration_mean" in ref:
            v["calibration_vs_reference"] = round(v["calibration_mean"] / ref["calibration_mean"], 4)


# --- gpu ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSettings:
    """One `tools/bench_distcal.py gpu` call.

    model: realsize name recorded and trained (`wan-1.3b`); memory_model: realsize name of the ZeRO memory phase
        (`wan-14b`; a Wan size: its transformer is cut to one block). prompts, steps, interval: the calibration.
    record_steps: steps recorded per prompt (then extrapolated); epochs: fixed epochs per training run.
    gpus: worker counts compared (recording also at sequence-parallel degree = workers); phases: of `PHASES`.
    work: folder for the saved model, the runs and Ray Train's storage. quick: CPU workers (gloo), fp32.
    """

    model: str = "wan-1.3b"
    memory_model: str = "wan-14b"
    prompts: int = 5
    steps: int = 50
    interval: int = 5
    record_steps: int = 10
    epochs: int = 20
    gpus: tuple[int, ...] = (1, 2)
    phases: tuple[str, ...] = PHASES
    work: str = "/tmp/lbdist-bench-distcal"
    quick: bool = False

    @classmethod
    def quick_settings(cls, **changes) -> "GpuSettings":
        """The same code on CPU workers in seconds: tiny Wan, 2 prompts x 8 steps, N=4, 3 epochs."""
        return cls(**{**dict(model="tiny-wan", memory_model="tiny-wan", prompts=2, steps=8, interval=4,
                             record_steps=8, epochs=3, quick=True), **changes})

    def __post_init__(self):
        if [p for p in self.phases if p not in PHASES]:
            raise ValueError(f"phases must be among {PHASES}, got {self.phases}")
        if not 1 <= self.prompts <= len(PROMPTS):
            raise ValueError(f"prompts must be 1..{len(PROMPTS)}, got {self.prompts}")


def save_model(name: str, folder: Path, device: str) -> dict:
    """The realsize pipeline with seeded random weights, saved once as a diffusers folder (with its call arguments
    in `lbdist_defaults.json`) that every worker loads; returns those call arguments."""
    from .realsize import call_kwargs, realsize_pipeline

    if not (folder / "model_index.json").is_file():
        loaded = realsize_pipeline(name, device, "bfloat16" if device == "cuda" else "float32")
        loaded.pipe.save_pretrained(str(folder))
        (folder / "lbdist_defaults.json").write_text(json.dumps(call_kwargs(name)))
        del loaded
    return json.loads((folder / "lbdist_defaults.json").read_text())


def _job(s: GpuSettings, folder: Path, run_id: str, workers: int, sp: int):
    from ..calibrate import TrainConfig
    from ..distributed.config import CalibrationJob

    train = TrainConfig(recipe="paper", lr=1e-4, max_epochs=s.epochs, patience=10**6, eval_every=s.epochs,
                        refit=False)
    return CalibrationJob(family="wan", model=str(folder), prompts=PROMPTS[:s.prompts], schedule=str(s.interval),
                          steps=s.steps, output=str(Path(s.work) / "runs"), run_id=run_id, workers=workers,
                          sp_degree=sp, train=train, dtype="auto")


def record_layout(s: GpuSettings, folder: Path, gpu: bool, workers: int, sp: int) -> dict:
    """Record `s.prompts` prompts (first `record_steps` steps each) on `workers // sp` groups of `sp` workers."""
    from ..distributed.layout import RunLayout, clear_run
    from ..distributed.pool import _start_groups
    from ..distributed.progress import Progress
    from ..distributed.record import describe_model, record_all

    job = _job(s, folder, f"record-{workers}w-sp{sp}", workers, sp)
    layout = RunLayout.of(job.output, job.run_id)
    clear_run(layout)
    began = time.perf_counter()
    groups = _start_groups(job, sp, gpu)
    started = time.perf_counter() - began
    try:
        description = groups[0].run(describe_model, {"prompt": PROMPTS[0], "height": None, "width": None,
                                                     "frames": None, "steps": s.steps, "guidance": None,
                                                     "schedule": job.schedule})[0]
        write_json(layout.path("pairs", "manifest.json"), {**description, "schedule": job.parsed_schedule().to_dict(),
                                                           "prompts": list(job.prompts), "seeds": list(job.seeds)})
        t = time.perf_counter()
        record_all(job, layout, groups, description, Progress(job.run_id), lambda: False, stop_after=s.record_steps)
        seconds = time.perf_counter() - t
    finally:
        for group in groups:
            group.shutdown()
    steps = s.prompts * s.record_steps
    return {"workers": workers, "sp_degree": sp, "groups": workers // sp, "group_start_s": round(started, 1),
            "seconds": round(seconds, 2), "steps_recorded": steps, "seconds_per_step": round(seconds / steps, 4),
            "extrapolated_all_steps_s": round(seconds / steps * s.prompts * s.steps, 1),
            "extrapolated_note": f"{s.record_steps} of {s.steps} steps recorded per prompt; the full schedule is "
                                 "extrapolated linearly", "run": layout.root}


def train_workers(s: GpuSettings, folder: Path, gpu: bool, workers: int, recording: str) -> dict:
    """Train every recorded bridge for `s.epochs` epochs on `workers` Ray Train workers (ZeRO-2)."""
    from ..distributed.layout import RunLayout, clear_run, read_json
    from ..distributed.progress import Progress, StopSignal
    from ..distributed.record import verify
    from ..distributed.train import train_all

    job = _job(s, folder, f"train-{workers}w", workers, 1)
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
    return {"workers": workers, "bridges": bridges, "epochs": s.epochs, "pairs": sum(len(v) for v in entries.values()),
            "training_loop_s": round(loop, 2), "seconds_per_epoch": round(loop / s.epochs, 4), "wall_s": round(wall, 1),
            "extrapolated_all_bridges_s_per_epoch": round(loop / s.epochs * all_bridges / bridges, 3),
            "note": f"{bridges} bridges recorded ({s.record_steps} of {s.steps} steps); all {all_bridges} bridges "
                    "extrapolated by bridge count"}


def _one_block(name: str, device: str, dtype):
    """The transformer of realsize `name` cut to one block (a Wan size), random weights, and its spec."""
    from ..models import get_spec
    from .realsize import building, lookup

    spec, size = lookup(name)
    if spec.family != "wan":
        raise ValueError(f"the memory phase takes a Wan size (one block list), got {name!r} ({spec.family})")
    with building(device, dtype):
        transformer = spec.transformer_class(**{**dict(size.config), "num_layers": 1})
    transformer = transformer.eval().requires_grad_(False)
    return transformer, get_spec(transformer)


def _synthetic_pair(name: str, transformer, spec, device: str, dtype):
    """One pair at the real shape: the final block's inputs captured from one step, a random target."""
    import torch

    from ..calibrate.objective import block_args
    from ..calibrate.trainer import Pair
    from .realsize import step_inputs

    final, seen = spec.final_block(transformer), {}
    handle = final.register_forward_hook(lambda m, a, kw, out: seen.update(bound=block_args(m).bind(a, kw)),
                                         with_kwargs=True)
    latents, kwargs_at = step_inputs(name, transformer, device=device, dtype=dtype)
    with torch.no_grad():
        transformer(**kwargs_at(latents, 0.5))
    handle.remove()
    stream = {n: seen["bound"].pop(n) for n in spec.stream_names}
    return Pair(0, stream, seen["bound"], torch.randn_like(stream["hidden_states"]))


def memory_loop(config: dict) -> None:
    """On each Ray Train worker: every bridge of the schedule on the final block of `config['model']`, one
    synthetic pair at the real shape shared by a rank's bridges, a few epochs; rank 0 writes every rank's peak
    memory to `config['out']` (Ray Train keeps metrics only with checkpoints)."""
    import resource

    import ray.train
    import torch

    from ..calibrate import TrainConfig
    from ..calibrate.zero import ZeroSettings, zero_engine
    from ..distributed.joint import BridgePlan, JointFit, LocalPair
    from ..distributed.lora import RoutedBlock, initial_state

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    transformer, spec = _one_block(config["model"], device, dtype)
    final = spec.final_block(transformer)
    pair = _synthetic_pair(config["model"], transformer, spec, device, dtype)
    train = TrainConfig(recipe="paper", max_epochs=config["epochs"], patience=10**6, eval_every=config["epochs"],
                        refit=False).resolved(spec.family)
    bridges = [(s, "cond") for s in range(1, config["bridges"] + 1)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    plans = [BridgePlan(b, i, world, 0, train.max_epochs) for i, b in enumerate(bridges)]
    routed = RoutedBlock(final, spec.lora_targets, bridges, train.rank, train.alpha,
                         [initial_state(final, train, spec.lora_targets, 0)] * len(bridges)).to(device)
    engine = zero_engine(routed, [routed.bridge_parameters(i) for i in range(len(bridges))],
                         ZeroSettings(lr=train.lr, bf16=cuda, stage=config["stage"]))
    mine = [LocalPair(i, pair) for i in range(len(bridges)) if i % world == rank]
    JointFit(routed, engine, spec, train, plans, mine).run()
    value = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = torch.tensor([value / 2**30], device=device, dtype=torch.float64)
    peaks = [torch.zeros_like(peak) for _ in range(world)]
    torch.distributed.all_gather(peaks, peak)
    if rank == 0:
        Path(config["out"]).write_text(json.dumps([round(float(p), 3) for p in peaks]))


def memory_phase(s: GpuSettings, gpu: bool, stage: int, workers: int) -> dict:
    """Peak memory per rank with every bridge of `s.memory_model`'s schedule trained together at ZeRO `stage`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .realsize import latent_tokens

    bridges = len([i for i in range(s.steps) if i % s.interval]) * 2
    peaks = Path(s.work) / f"memory-stage{stage}.json"
    trainer = TorchTrainer(memory_loop, train_loop_config={"model": s.memory_model, "stage": stage, "epochs": 2,
                                                           "bridges": bridges, "out": str(peaks)},
                           torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
                           run_config=RunConfig(name=f"memory-stage{stage}", storage_path=str(Path(s.work) / "ray")))
    trainer.fit()
    return {"model": s.memory_model, "tokens": latent_tokens(s.memory_model), "bridges": bridges, "lora_rank": 32,
            "zero_stage": stage, "workers": workers, "peak_gb_per_rank": json.loads(peaks.read_text()),
            "measure": "torch.cuda.max_memory_allocated" if gpu else "process peak RSS (CPU quick)",
            "note": "one synthetic pair shared by every bridge of a rank (the recording's pairs add their own bytes)"}


def _speedups(rows: list[dict], key: str) -> None:
    base = rows[0][key]
    for r in rows:
        r["speedup_vs_1"] = round(base / r[key], 3)
        r["scaling_efficiency"] = round(base / r[key] / r["workers"], 3)


def run_gpu(s: GpuSettings, out: str | os.PathLike) -> dict:
    """Every phase of `s.phases` on a Ray cluster started here (`ray.init`); the report is rewritten at `out`
    after every phase and returned."""
    import ray
    import torch

    cuda = torch.cuda.is_available() and not s.quick
    folder = Path(s.work) / s.model
    report = {"benchmark": "bench_distcal", **environment("diffusers", "deepspeed", "ray"),
              "gpus": torch.cuda.device_count(), "cpus": os.cpu_count(), "settings": vars(s), "phases": {}}
    t = time.perf_counter()
    report["call"] = save_model(s.model, folder, "cuda" if cuda else "cpu")
    report["build_s"] = round(time.perf_counter() - t, 1)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, **({} if cuda else {"num_cpus": max(2, *s.gpus)}))
    try:
        _phases(s, folder, cuda, report, out)
    finally:
        if started:  # leave the process as it was (a caller's own ray.init must not meet this cluster)
            ray.shutdown()
    return report


def _phases(s: GpuSettings, folder: Path, cuda: bool, report: dict, out) -> None:
    phases = report["phases"]
    if "record" in s.phases:
        phases["record"] = []
        for w, sp in [(w, sp) for w in s.gpus for sp in sorted({1, w})]:
            phases["record"].append(record_layout(s, folder, cuda, w, sp))
            write_json(out, report, indent=1)
            if len(phases["record"]) > 1:  # only the first recording is trained on: free the disk
                shutil.rmtree(phases["record"][-1]["run"], ignore_errors=True)
        _speedups(phases["record"], "seconds")
        write_json(out, report, indent=1)
    if "train" in s.phases:
        recording = phases["record"][0]["run"] if "record" in phases else str(Path(s.work) / "runs" / "record-1w-sp1")
        phases["train"] = [train_workers(s, folder, cuda, w, recording) for w in s.gpus]
        _speedups(phases["train"], "training_loop_s")
        write_json(out, report, indent=1)
    if "memory" in s.phases:
        phases["memory"] = []
        for stage in (0, 2):
            phases["memory"].append(memory_phase(s, cuda, stage, max(s.gpus)))
            write_json(out, report, indent=1)
