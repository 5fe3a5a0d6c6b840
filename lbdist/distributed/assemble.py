"""The adapter set of a finished run, from the bridges its trainers wrote: `<run>/adapters`, loadable by Generator."""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load as load_bytes

from .. import __version__, storage
from .layout import RunLayout, read_json


def assemble(job, layout: RunLayout, description: dict):
    """Write `<run>/adapters` (safetensors per bridge + `lbdist_adapters.json` with digests); returns the set."""
    from ..bridge import AdapterSet, LoraSettings, Schedule
    from ..models import get_spec_by_family
    from .train import finished_bridges

    bridges = sorted(finished_bridges(layout))
    spec = get_spec_by_family(job.family)
    config = job.resolved_train()
    adapters = AdapterSet(
        job.family, description["transformer_class"], description["config_digest"],
        Schedule.from_dict(description["schedule"]), tuple(sorted({b for _, b in bridges})),
        LoraSettings(config.rank, config.alpha, spec.lora_targets),
        extra={"lbdist_version": __version__, "training": {}, "train_config": asdict(config),
               "recording": {"prompts": list(job.prompts), "seeds": list(job.seeds),
                             "call_kwargs": description["call_kwargs"]},
               "calibration_prompts": list(job.prompts),
               "held_out_prompts": list(range(len(job.prompts)))[len(job.prompts) - config.holdout_prompts:]
               if config.holdout_prompts else [],
               "distributed": {"run_id": job.run_id, "model": job.model, "workers": job.workers,
                               "train_workers": job.train_workers or job.workers, "zero_stage": 2,
                               "warm_start": job.warm_start}})
    for step, branch in bridges:
        adapters.weights[(step, branch)] = load_bytes(storage.read_bytes(layout.bridge_file(step, branch, "safetensors")))
        adapters.extra["training"][f"{step}_{branch}"] = read_json(layout.bridge_file(step, branch, "json"))
    if storage.is_local(layout.adapters):
        adapters.save(storage.local_path(layout.adapters))
        return adapters
    with tempfile.TemporaryDirectory() as tmp:
        adapters.save(tmp)
        names = sorted(p.name for p in Path(tmp).iterdir())
        manifest = "lbdist_adapters.json"
        for name in [n for n in names if n != manifest] + [manifest]:  # the manifest last: it names the others
            storage.write_bytes(storage.join(layout.adapters, name), (Path(tmp) / name).read_bytes())
    return adapters
