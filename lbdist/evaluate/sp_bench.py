"""Sequence parallelism (xfuser Ulysses in lbdist Ray worker groups) times the bridge, on real-size transformers:
what every rank measures, and the driver that runs it on a group of each degree (what `tools/bench_sp.py` sweeps).

For each degree d a `WorkerGroup` of d Ray actors (one per GPU, NCCL; gloo ranks on the CPU) is started and every
rank, through `group.run(measure, ...)`, builds the model (random weights, same seed on every rank), times full
steps (median after warm-ups, CUDA-synchronised inside the rank, so Ray adds nothing), then bridged steps (the
lbdist hooks, a real `cache_context` per step, a random adapter resident for every bridge) and, at the loop
degree, a real T-step Euler loop with the bridge per interval N (classifier-free guidance as two calls per step
for families with two branches). At degree 1 the plain diffusers model is the baseline; xfuser's wrapper at
degree 1 may be timed too, to separate what the wrapper changes from what the split buys. Derived numbers,
targets and merging are in `sp_report.py`.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..bridge import BridgeConfig, Schedule, apply_bridge, remove_bridge, reset_bridge
from . import realsize, sp_report
from .bridge_speed import random_adapters
from .timing import denoise, free_cuda_cache, sync, times_s


# --- inside each rank --------------------------------------------------------------------------------------
def _build(worker, name: str, mode: str, dtype: torch.dtype) -> torch.nn.Module:
    """The real-size transformer on this rank: plain (`diffusers`) or under xfuser's SP wrapper (`xfuser`)."""
    torch.manual_seed(0)  # every rank (and every call) holds the same random weights
    if mode == "diffusers":
        return realsize.build_transformer(name, worker.device, dtype)
    from ..parallel import xdit

    spec, size = realsize.lookup(name)
    with realsize.building(worker.device, dtype):
        model = xdit.build_wrapped(spec.family, dict(size.config))
    xdit.init_runtime(model, ulysses=worker.ulysses, ring=worker.ring)
    return model.eval().requires_grad_(False)


def _bridged_times(model, kwargs_at, latents, repeats: int, rank: int) -> list[float]:
    """Step 0 full, then `repeats` bridged steps with their adapters, each through a real cache_context."""
    schedule = Schedule.explicit(repeats + 2, [0])
    apply_bridge(model, config=BridgeConfig(schedule, adapters=random_adapters(model, schedule, rank),
                                            branches=("cond",)))
    times = []
    try:
        for i in range(repeats + 2):
            sync(latents.device)
            start = time.perf_counter()
            with model.cache_context("cond", step_index=i, num_inference_steps=repeats + 2):
                model(**kwargs_at(latents, 0.5))
            sync(latents.device)
            if i >= 2:  # step 1 is the bridged warm-up
                times.append(time.perf_counter() - start)
    finally:
        reset_bridge(model)
        remove_bridge(model)
    return times


def _loop(model, name: str, kwargs_at, latents, steps: int, interval: int, rank: int) -> dict:
    """A real T-step Euler loop with the bridge; families with two branches run CFG (cond and uncond calls)."""
    spec, size = realsize.lookup(name)
    branches = tuple(spec.branches)
    schedule = Schedule.periodic(steps, interval)
    adapters = random_adapters(model, schedule, rank, branches)
    runtime = apply_bridge(model, config=BridgeConfig(schedule, adapters=adapters, branches=branches))
    negative = None
    if len(branches) > 1:
        text = kwargs_at(latents, 0.5)["encoder_hidden_states"]
        noise = torch.randn(text.shape, generator=torch.Generator().manual_seed(1))
        negative = {"encoder_hidden_states": noise.to(text.device, text.dtype)}
    try:
        run = denoise(model, latents, kwargs_at, steps, negative=negative, guidance=size.guidance)
        stats = dict(runtime.stats)
    finally:
        reset_bridge(model)
        remove_bridge(model)
    return {"seconds": run.seconds, "steps": steps, "interval": interval, "full_steps": len(schedule.full_steps),
            "calls_per_step": len(branches), "stats": stats, "finite": bool(torch.isfinite(run.latents).all())}


def measure(worker, name: str, mode: str, opts: dict) -> dict:
    """Everything one rank measures for one model (called on every rank at once through `group.run`)."""
    device = worker.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = _build(worker, name, mode, dtype)
    latents, kwargs_at = realsize.step_inputs(name, model, device, dtype)
    out = {"rank": worker.rank, "mode": mode, "degree": worker.sp_degree}
    with torch.no_grad():
        out["full_s"] = times_s(lambda: model(**kwargs_at(latents, 0.5)), opts["repeats"], opts["warmup"], device)
        sample = model(**kwargs_at(latents, 0.5))[0]  # collective: every rank calls it
        if worker.rank == 0:
            out["sample"] = sample.cpu()  # the model's dtype (bf16 on GPUs): exact, and half the bytes of fp32
        out["bridged_s"] = _bridged_times(model, kwargs_at, latents, opts["repeats"], opts["lora_rank"])
        if opts.get("loop"):
            out["loops"] = {str(n): _loop(model, name, kwargs_at, latents, opts["steps"], n, opts["lora_rank"])
                            for n in opts["intervals"]}
            out["loop"] = out["loops"][str(opts["intervals"][0])]  # the first interval, under its old key
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model
    free_cuda_cache()
    return out


def comm_probe(worker, megabytes: int, repeats: int = 5) -> dict:
    """All-to-all bandwidth of this group (the collective Ulysses runs four times per attention layer)."""
    import torch.distributed as dist

    n = dist.get_world_size()
    numel = megabytes * 2**20 // 2 // n * n
    x = torch.randn(numel, device=worker.device).to(torch.bfloat16 if worker.device.type == "cuda" else torch.float32)
    y = torch.empty_like(x)
    seconds = statistics.median(times_s(lambda: dist.all_to_all_single(y, x), repeats, 2, worker.device))
    return {"megabytes": megabytes, "seconds": seconds, "algbw_gb_s": x.numel() * x.element_size() / seconds / 1e9}


# --- driver ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SPRun:
    """What one measuring call does.

    models: real-size names; degrees: SP degrees measured now, in this order (largest first after 1 keeps the
    expensive ones if the call is cut short); steps: T of each loop; intervals: N of each loop; loop_degree: the
    degree whose call runs the loops; repeats / warmup: timed and untimed steps per median; lora_rank: of the
    random adapters; sp1_wrapper: also time xfuser's wrapper at degree 1; call_timeout_s: how long one model may
    take on a group before it is declared stuck; quick: CPU smoke run (gloo ranks, no GPUs).
    """

    models: tuple[str, ...]
    degrees: tuple[int, ...]
    steps: int
    intervals: tuple[int, ...]
    loop_degree: int
    repeats: int = 5
    warmup: int = 2
    lora_rank: int = 32
    sp1_wrapper: bool = True
    call_timeout_s: float = 420.0
    quick: bool = False

    def __post_init__(self):
        if type(self.steps) is not int or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if type(self.repeats) is not int or self.repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {self.repeats!r}")
        if any(type(d) is not int or d < 1 for d in self.degrees):
            raise ValueError(f"degrees must be integers >= 1, got {list(self.degrees)}")
        if any(n < 1 for n in self.intervals) or len(set(self.intervals)) != len(self.intervals) or not self.intervals:
            raise ValueError(f"intervals must be distinct integers >= 1, got {list(self.intervals)}")
        for name in self.models:
            realsize.lookup(name)

    def options(self) -> dict:
        return {"repeats": self.repeats, "warmup": self.warmup, "lora_rank": self.lora_rank, "steps": self.steps,
                "intervals": list(self.intervals)}


def worker_env() -> dict:
    """Environment of every rank: this lbdist first on the path (the checkout the driver imports), quiet xfuser."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join([root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {"PYTHONPATH": path, "XDIT_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}


def new_report(run: SPRun, environment: dict, merged_degrees=()) -> dict:
    """The report skeleton of a call: its settings and an empty `runs` per model."""
    return {"benchmark": "bench_sp", "quick": run.quick, **environment, "steps": run.steps,
            "interval": run.intervals[0], "intervals": list(run.intervals), "loop_degree": run.loop_degree,
            "repeats": run.repeats, "lora_rank": run.lora_rank,
            "degrees": sorted(set(run.degrees) | set(merged_degrees)),
            "models": {n: {"family": realsize.lookup(n)[0].family, "shape": realsize.lookup(n)[1].label(),
                           "latent_tokens": realsize.latent_tokens(n), "runs": {}} for n in run.models}}


def run_degree(group, degree: int, run: SPRun, report: dict, log=print) -> None:
    """Every model on one group: its modes at this degree, summarised, compared with the 1-GPU output."""
    for name in run.models:
        modes = (["diffusers"] + (["xfuser"] if run.sp1_wrapper else [])) if degree == 1 else ["xfuser"]
        for mode in modes:
            started = time.perf_counter()
            loop = degree == run.loop_degree and mode == "xfuser"
            per_rank = group.run(measure, name, mode, {**run.options(), "loop": loop})
            row = sp_report.summarise(per_rank)
            sp_report.compare_to_one_gpu(report["models"][name], row, per_rank[0]["sample"], mode)
            report["models"][name]["runs"][f"{degree}/{mode}"] = row
            log(f"[bench_sp] {name} degree {degree} {mode}: full {row['full_s_median']:.4f} s, bridged "
                f"{row['bridged_s_median']:.4f} s ({time.perf_counter() - started:.0f} s)")


def _start_group(degree: int, run: SPRun, report: dict):
    from ..parallel import WorkerGroup, WorkerGroupConfig

    started = time.perf_counter()
    config = WorkerGroupConfig(num_workers=degree, gpus_per_worker=0 if run.quick else None, env_vars=worker_env(),
                               call_timeout_s=run.call_timeout_s)
    group = WorkerGroup(config).start()
    info = group.info[0]
    card = info.get("gpu") or report["host_cpu"]
    if report.setdefault("card", card) != card:
        group.shutdown()
        raise sp_report.MergeError(f"this call runs on {card}, the merged reports on {report['card']}")
    report.setdefault("workers", {})[str(degree)] = {
        "backend": info["backend"], "gpus": [i.get("gpu") for i in group.info],
        "group_start_s": time.perf_counter() - started}
    return group


def measure_all(run: SPRun, report: dict, out: Path, targets, merged: bool, log=print) -> None:
    """Measure every degree of `run` on its own group, deriving and writing the report after each."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, **({"num_cpus": 2, "num_gpus": 0} if run.quick else {}))
    if merged:
        report["parts"].append({"file": out.name, "commit": report["commit"], "date": report["date"],
                                "degrees": list(run.degrees), "runs": {}})
    try:
        for degree in run.degrees:
            group = _start_group(degree, run, report)
            try:
                if degree > 1:
                    report["workers"][str(degree)]["all_to_all"] = group.run(comm_probe, 4 if run.quick else 256)[0]
                run_degree(group, degree, run, report, log)
            finally:
                group.shutdown()
            if merged:
                report["parts"][-1].update(card=report["card"], workers={
                    str(d): report["workers"][str(d)] for d in run.degrees if str(d) in report["workers"]}, runs={
                    n: sorted(k for k in m["runs"] if int(k.split("/")[0]) in run.degrees)
                    for n, m in report["models"].items()})
            derive_all(report, run.models, run.loop_degree, run.steps, list(run.intervals), targets)
            sp_report.write(report, out)
    finally:
        if started_ray:
            ray.shutdown()


def derive_all(report: dict, models, loop_degree: int, steps: int, intervals: list[int], targets) -> None:
    """`sp_report.derive` for every model, each judged by its target set (`targets`: a list of `SPTargets`)."""
    for name in models:
        sp_report.derive(report["models"][name], name, loop_degree, steps, intervals,
                         sp_report.targets_for(name, targets or []))

