"""The recording stage of a job: verify what an earlier submission recorded, start worker groups, record the rest.

Groups are `lbdist.parallel.WorkerGroup`s of `sp_degree` workers each, every rank loading the model itself
(`load_pipeline`); with no `sp_degree` given, video models use the largest degree that divides the workers (up to
8) and the attention heads, image models 1. The groups are shut down (GPUs freed) before training starts.
"""
from __future__ import annotations

from .layout import RunLayout, read_json, write_json
from .record import describe_model, record_all, verify

MANIFEST = "manifest.json"


def use_gpu_for(job, ray) -> bool:
    if job.use_gpu is not None:
        return bool(job.use_gpu)
    return ray.cluster_resources().get("GPU", 0) > 0


def _heads(model: str, family: str) -> int | None:
    import json

    from ..models import get_spec_by_family

    if model.startswith("tiny:"):
        return int(get_spec_by_family(family).tiny_config["num_attention_heads"])
    try:
        from .block import _folder

        folder = _folder(model)
        return int(json.loads((folder / "transformer" / "config.json").read_text())["num_attention_heads"])
    except Exception:  # unknown here: the group's own check names the problem
        return None


def sp_degree_for(job) -> int:
    from ..models import get_spec_by_family

    if job.sp_degree is not None:
        return job.sp_degree
    if not get_spec_by_family(job.family).is_video:
        return 1
    heads = _heads(job.model, job.family)
    return max(d for d in range(1, min(job.workers, 8) + 1)
               if job.workers % d == 0 and (heads is None or heads % d == 0))


def _start_groups(job, sp: int, gpu: bool) -> list:
    from ..parallel import PipelineFactory, WorkerGroup, WorkerGroupConfig

    factory = PipelineFactory("lbdist.generation.loading:load_pipeline", {"source": job.model, "dtype": job.dtype})
    config = WorkerGroupConfig(num_workers=sp, gpus_per_worker=1 if gpu else 0, backend="nccl" if gpu else "gloo",
                               cpus_per_worker=job.cpus_per_worker)
    groups = []
    try:
        for _ in range(job.workers // sp):
            groups.append(WorkerGroup(config, factory).start())
    except BaseException:
        for group in groups:
            group.shutdown()
        raise
    return groups


def record_stage(job, layout: RunLayout, progress, stop, gpu: bool) -> tuple[dict, dict, dict]:
    """(model description, committed prompts -> index entries, counts) after recording what is missing."""
    good, bad = verify(layout, full=job.verify == "full")
    manifest_path = layout.path("pairs", MANIFEST)
    description = read_json(manifest_path)
    total = len(job.prompts)
    progress.line("record", f"{len(good)}/{total} prompts already recorded (verified {job.verify}, skipped)"
                  + (f" | {len(bad)} with missing or corrupted shards, recorded again: prompts {bad}" if bad else ""))
    if len(good) == total and description is not None:
        return description, good, {"recorded": 0, "skipped": len(good)}
    sp = sp_degree_for(job)
    progress.line("record", f"starting {job.workers // sp} group(s) of {sp} worker(s) (sequence parallel {sp}); "
                            f"{total - len(good)} prompts to record")
    groups = _start_groups(job, sp, gpu)
    try:
        fields = {"prompt": job.prompts[0], "height": job.height, "width": job.width, "frames": job.frames,
                  "steps": job.steps, "guidance": job.guidance, "schedule": job.schedule}
        fresh = groups[0].run(describe_model, fields)[0]
        if description is None:
            description = {**fresh, "schedule": job.parsed_schedule().to_dict(), "prompts": list(job.prompts),
                           "seeds": list(job.seeds)}
            write_json(manifest_path, description)
        elif description["config_digest"] != fresh["config_digest"]:
            raise ValueError(f"the recording in {layout.pairs} was made on another model (config digest "
                             f"{description['config_digest']}, now {fresh['config_digest']}): use --restart")
        counts = record_all(job, layout, groups, description, progress, stop)
    finally:
        for group in groups:
            if stop():  # a prompt may still be running: stop the actors now instead of waiting for it
                group._break("the job was asked to stop")
            group.shutdown()
    good, _ = verify(layout, full=False)
    return description, good, counts
