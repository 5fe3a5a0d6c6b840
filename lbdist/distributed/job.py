"""The calibration job end to end: arguments -> checks -> record on the pool -> train -> adapter set.

    job, layout = prepare(sys.argv[1:], family="wan")   # every bad input refused here (ValueError, one line)
    ray.init()
    sys.exit(run_job(job, layout))                       # 0, or 1 with a one-line reason

`jobs/calibrate_{wan,hunyuan,flux}.py` are exactly that. A resubmission with the same run id resumes: recorded
prompts are verified and skipped, finished bridges are skipped, and an interrupted trainer resumes from its last
checkpoint; all of it is counted in the log.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import __version__
from ..calibrate import TrainConfig
from .config import CalibrationJob
from .layout import RUN_FILE, RunLayout, check_run, check_storage, clear_run, write_json
from .progress import Progress, StopSignal, first_line


class Stopped(RuntimeError):
    """The job was asked to stop (SIGTERM / SIGINT) and saved its work."""


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompts file {path!r} does not exist (one prompt per line)")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path!r} holds no prompts (one per line; '#' starts a comment)")
    return prompts


def parser(family: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"calibrate_{family}", description=f"Calibrate a {family} model on a Ray cluster")
    p.add_argument("--model", required=True, help="Hub id, local diffusers folder, toy:<family> or tiny:<family>")
    p.add_argument("--prompts", required=True, help="text file, one calibration prompt per line (3-5)")
    p.add_argument("--schedule", required=True, help="N, periodic:N[:w=W][:z=Z] or steps:0,5,...")
    p.add_argument("--steps", type=int, required=True, help="denoising steps")
    p.add_argument("--output", required=True, help="storage URI or shared path; the run lives in <output>/<run-id>")
    p.add_argument("--run-id", required=True, help="names the run; resubmitting the same id resumes it")
    p.add_argument("--workers", type=int, default=1, help="Ray workers (GPUs) to record and train on")
    p.add_argument("--sp-degree", type=int, default=None, help="sequence-parallel ranks per recording group")
    p.add_argument("--train-workers", type=int, default=None, help="data-parallel workers per trainer")
    p.add_argument("--seeds", type=int, nargs="*", default=(), help="one seed per prompt (default 0, 1, ...)")
    for name, kind in (("height", int), ("width", int), ("frames", int), ("guidance", float)):
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alpha", type=float, default=64.0)
    p.add_argument("--lr", type=float, default=None, help="default: the family's reference rate")
    p.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the family's reference)")
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--holdout", type=int, default=0, help="prompts held out for early stopping (no refit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-start", action="store_true",
                   help="start each bridge from its neighbour's trained LoRA (trains in waves by offset)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="epochs per checkpoint (default --eval-every)")
    p.add_argument("--max-failures", type=int, default=3)
    p.add_argument("--max-bridges-per-trainer", type=int, default=None, help="split bridges into groups this size")
    p.add_argument("--max-concurrent-trainers", type=int, default=None, help="groups trained at once")
    p.add_argument("--memory-gb", type=float, default=None)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--cpu", action="store_true", help="CPU workers even if the cluster has GPUs")
    p.add_argument("--verify", default="full", choices=("full", "size"))
    p.add_argument("--restart", action="store_true", help="start the run over instead of resuming it")
    return p


def job_from_args(argv: list[str], family: str) -> CalibrationJob:
    a = parser(family).parse_args(argv)
    train = TrainConfig(recipe="paper", rank=a.rank, alpha=a.alpha, lr=a.lr, max_epochs=a.epochs, patience=a.patience,
                        eval_every=a.eval_every, holdout_prompts=a.holdout, refit=False, seed=a.seed)
    return CalibrationJob(family=family, model=a.model, prompts=tuple(read_prompts(a.prompts)), schedule=a.schedule,
                          steps=a.steps, output=a.output, run_id=a.run_id, workers=a.workers, sp_degree=a.sp_degree,
                          train_workers=a.train_workers, seeds=tuple(a.seeds or ()), height=a.height, width=a.width,
                          frames=a.frames, guidance=a.guidance, dtype=a.dtype, train=train, warm_start=a.warm_start,
                          checkpoint_every=a.checkpoint_every, max_failures=a.max_failures,
                          max_bridges_per_trainer=a.max_bridges_per_trainer, memory_gb=a.memory_gb,
                          max_concurrent_trainers=a.max_concurrent_trainers,
                          cpus_per_worker=a.cpus_per_worker, use_gpu=False if a.cpu else None, verify=a.verify,
                          restart=a.restart)


def check_model(job: CalibrationJob) -> None:
    """The model reference must resolve and be of the job's family (read without loading weights)."""
    from ..models import get_spec_by_family, specs
    from ..refs import ensure_available, resolve_ref

    ref = resolve_ref(job.model, "model")
    ensure_available(ref)
    family = None
    if ref.kind == "builtin":
        family = job.model.split(":", 1)[1]
    elif ref.kind == "local":
        index = Path(ref.value) / "model_index.json"
        if not index.is_file():
            raise ValueError(f"model {job.model!r}: {ref.value} is not a diffusers pipeline folder (no model_index.json)")
        name = json.loads(index.read_text()).get("_class_name")
        family = next((s.family for s in specs() if s.pipeline_class == name), name)
    elif ref.kind == "uri":
        raise ValueError(f"model {job.model!r}: load models from a local folder or a Hub id, not a URI")
    get_spec_by_family(job.family)
    if family is not None and family != job.family:
        raise ValueError(f"model {job.model!r} is a {family} model; this job calibrates {job.family} models "
                         f"(use jobs/calibrate_{family}.py)")


def prepare(argv: list[str], family: str) -> tuple[CalibrationJob, RunLayout]:
    """Parse and check everything that can be checked before the cluster is used; ValueError (one line) if bad."""
    job = job_from_args(argv, family)
    check_model(job)
    check_storage(job.output)
    layout = RunLayout.of(job.output, job.run_id)
    if job.restart:
        clear_run(layout)
    old = check_run(layout, job.settings(), job.run_id)
    if old is None:
        write_json(layout.path(RUN_FILE), {"run_id": job.run_id, "lbdist_version": __version__,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": job.settings()})
    return job, layout


def run_job(job: CalibrationJob, layout: RunLayout, progress: Progress | None = None) -> int:
    """Run (or resume) the job on the connected Ray cluster; 0 on success, 1 with a one-line reason otherwise."""
    progress = progress or Progress(job.run_id)
    stop = StopSignal().install()
    try:
        summary = _stages(job, layout, progress, stop)
    except Stopped as exc:
        progress.line("stopped", str(exc))
        return 1
    except Exception as exc:  # every failure ends as one line (the traceback is in the worker logs)
        progress.line("failed", first_line(exc))
        return 1
    progress.line("done", summary)
    return 0


def _stages(job, layout, progress, stop) -> str:
    from .pool import record_stage, use_gpu_for
    from .train import train_all

    import ray

    gpu = use_gpu_for(job, ray)
    schedule = job.parsed_schedule()
    progress.line("plan", f"model {job.model} ({job.family}) | {len(job.prompts)} prompts x {job.steps} steps, "
                          f"{schedule.description} | {job.workers} {'GPU' if gpu else 'CPU'} workers | output "
                          f"{layout.root}")
    description, entries, record = record_stage(job, layout, progress, stop, gpu)
    if stop():
        raise Stopped(f"stopped while recording: {len(entries)} of {len(job.prompts)} prompts recorded; resubmit "
                      f"with the same --run-id to resume")
    train = train_all(job, layout, description, entries, progress, stop, gpu)
    if stop() or not train.get("complete", True):
        raise Stopped(f"stopped while training: {train['skipped'] + train['trained']} of {train['total']} bridges "
                      "finished, the rest checkpointed; resubmit with the same --run-id to resume")
    from .assemble import assemble

    adapters = assemble(job, layout, description)
    return (f"{len(adapters.weights)} adapters in {layout.adapters} | skipped {record['skipped']} prompts, "
            f"{train['skipped']} bridges already done | recorded {record['recorded']} prompts, trained "
            f"{train['trained']} bridges | {progress.elapsed()}")
