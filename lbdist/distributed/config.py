"""The settings of one distributed calibration run (`CalibrationJob`), validated before any work starts.

Everything here is plain data: the job scripts (jobs/calibrate_*.py) build one from their arguments, and a bad
value raises `ValueError` with one line naming the value and what is allowed. What depends on the outside world
(the prompts file, the storage URI, an earlier run with the same id) is checked by `lbdist.distributed.layout`.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

from ..calibrate import TrainConfig
from ..calibrate.config import RECIPE_SETTINGS

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERIFY = ("full", "size")
# Settings that shape the result: a run id keeps them for good (resubmitting with others is refused).
RESULT_KEYS = ("family", "model", "prompts", "seeds", "schedule", "steps", "height", "width", "frames", "guidance",
               "dtype", "train", "warm_start")


def _positive_int(name: str, value, minimum: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CalibrationJob:
    """One calibration run on a Ray cluster.

    family: the model family the job script is for (`wan`, `hunyuan_video`, `flux`); the model must be one.
    model: model reference (Hub id, local diffusers folder, `tiny:<family>` or `toy:<family>`), loaded by every
        worker (`lbdist.generation.loading.load_pipeline`).
    prompts: the calibration prompts (3-5 in the reference recipe; never the prompts you evaluate on).
    schedule: which steps run in full (`5`, `periodic:5:w=2`, `steps:0,5,...`); every other step is a bridge.
    steps: denoising steps; the schedule must fit them.
    output: storage URI or local path (`s3://bucket/calib`, `/shared/calib`); the run lives in `<output>/<run_id>`
        and the adapter set lands in `<output>/<run_id>/adapters`. On a multi-node cluster it must be storage every
        node reaches (an object store or a shared file system).
    run_id: names the run; resubmitting the same id resumes it (and refuses other result-shaping settings).
    workers: Ray workers (one GPU each, or `cpus_per_worker` CPUs each without GPUs) used to record and to train.
    sp_degree: sequence-parallel ranks per recording group (None: the largest that fits, for video; 1 for images);
        prompts are spread over the `workers // sp_degree` groups.
    train_workers: data-parallel training workers per trainer (None: `workers`).
    seeds: one seed per prompt (default 0, 1, 2, ...).
    height, width, frames, guidance: the sampling shape (None: the model's defaults).
    dtype: weights dtype of every worker ("auto": bf16 on GPU, fp32 on the CPU).
    train: how each bridge is trained (`TrainConfig`; lr and epochs default to the family's recipe). Held-out
        prompts are supported without refit (`refit=False`). Only the paper recipe (`recipe="paper"`: hidden-state
        objective, cached bridge input) runs distributed; other recipes are refused at submission.
    warm_start: each bridge starts from its neighbour's trained LoRA (the bridge one step earlier from the same
        anchor) instead of a fresh one; bridges then train in waves by their offset from the anchor, each wave
        after the one before it. Its measured effect on cost: README "Calibrate on a cluster", cost cut.
    checkpoint_every: epochs per checkpoint window (None: `train.eval_every`).
    max_failures: worker failures a trainer survives (each restarts it from its last checkpoint).
    max_bridges_per_trainer: bridges trained together by one trainer (None: as many as the memory estimate lets
        fit in `memory_gb`); more bridges are split into groups, each its own trainer.
    memory_gb: memory per training worker the plan may use (None: 70 GB per GPU; no limit on the CPU).
    max_concurrent_trainers: trainers running at once (None: as many as the cluster's workers allow).
    cpus_per_worker: CPUs per worker (and torch threads of a CPU worker).
    use_gpu: None (GPUs if the cluster has them), True or False.
    verify: how a resubmitted run checks recorded shards: "full" (sha256 of every byte) or "size".
    restart: start the run over (discarding its recording, checkpoints and adapters) instead of resuming.
    """

    family: str
    model: str
    prompts: tuple[str, ...]
    schedule: str
    steps: int
    output: str
    run_id: str
    workers: int = 1
    sp_degree: int | None = None
    train_workers: int | None = None
    seeds: tuple[int, ...] = ()
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    guidance: float | None = None
    dtype: str = "auto"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(recipe="paper", refit=False))
    warm_start: bool = False
    checkpoint_every: int | None = None
    max_failures: int = 3
    max_bridges_per_trainer: int | None = None
    memory_gb: float | None = None
    max_concurrent_trainers: int | None = None
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None
    verify: str = "full"
    restart: bool = False

    def __post_init__(self):
        prompts = tuple(p.strip() for p in self.prompts)
        if not prompts or not all(prompts):
            raise ValueError(f"calibration needs at least one non-empty prompt, got {len(prompts)}")
        seeds = tuple(int(s) for s in self.seeds) or tuple(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "seeds", seeds)
        if not RUN_ID.match(str(self.run_id)):
            raise ValueError(f"run id {self.run_id!r} must be 1-64 letters, digits, '.', '_' or '-', starting with "
                             "a letter or digit")
        if not isinstance(self.output, str) or not self.output.strip():
            raise ValueError(f"output must be a storage URI or path, got {self.output!r}")
        _positive_int("steps", self.steps, 2)
        _positive_int("workers", self.workers)
        _positive_int("sp_degree", self.sp_degree, allow_none=True)
        _positive_int("train_workers", self.train_workers, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("max_failures", self.max_failures, 0)
        _positive_int("max_bridges_per_trainer", self.max_bridges_per_trainer, allow_none=True)
        _positive_int("max_concurrent_trainers", self.max_concurrent_trainers, allow_none=True)
        if self.sp_degree is not None and self.workers % self.sp_degree:
            raise ValueError(f"workers({self.workers}) % sp_degree({self.sp_degree}) = {self.workers % self.sp_degree}"
                             ": each recording group has sp_degree workers, so workers must be a multiple of it")
        if self.memory_gb is not None and not self.memory_gb > 0:
            raise ValueError(f"memory_gb must be > 0, got {self.memory_gb!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.verify not in VERIFY:
            raise ValueError(f"verify must be one of {VERIFY}, got {self.verify!r}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        objective, bridge_input = RECIPE_SETTINGS[self.train.recipe]
        objective, bridge_input = self.train.objective or objective, self.train.bridge_input or bridge_input
        if (self.train.recipe, objective, bridge_input) != ("paper", "hidden", "cached"):
            raise ValueError(
                f"distributed calibration runs recipe 'paper' only (objective 'hidden', bridge_input 'cached'), got "
                f"recipe {self.train.recipe!r} (objective {objective!r}, bridge_input {bridge_input!r}): pass "
                "TrainConfig(recipe='paper', ...) or calibrate in one process (lbdist.calibrate.calibrate)")
        if self.train.holdout_prompts and self.train.refit:
            raise ValueError("held-out prompts with refit are not supported by distributed calibration yet: pass "
                             "--no-refit (early stopping on the held-out prompts, no refit) or --holdout 0")
        if self.train.holdout_prompts >= len(prompts):
            raise ValueError(f"holdout {self.train.holdout_prompts} leaves no training prompt out of {len(prompts)}")
        self.parsed_schedule()  # the schedule must fit the steps

    def parsed_schedule(self):
        from ..bridge import Schedule

        try:
            schedule = Schedule.parse(self.schedule, self.steps)
        except ValueError as exc:
            raise ValueError(f"schedule {self.schedule!r} does not fit {self.steps} steps: {exc}") from None
        interval = re.match(r"^(?:periodic:)?(\d+)", self.schedule)
        if interval and int(interval.group(1)) >= self.steps:
            raise ValueError(f"schedule {self.schedule!r}: interval {interval.group(1)} is not below the {self.steps} "
                             f"steps (only step 0 would run in full); use an interval < {self.steps}")
        if not schedule.bridged_steps:
            raise ValueError(f"schedule {self.schedule!r} over {self.steps} steps bridges no step: use an interval "
                             ">= 2 or list fewer full steps")
        return schedule

    @property
    def window(self) -> int:
        return self.checkpoint_every or self.train.eval_every

    def resolved_train(self) -> TrainConfig:
        return self.train.resolved(self.family)

    def settings(self) -> dict:
        """What shapes the result (kept in the run's `run.json`; a resubmission must match it)."""
        values = asdict(self)
        out = {k: values[k] for k in RESULT_KEYS if k != "train"}
        out.update({f"train.{k}": v for k, v in asdict(self.resolved_train()).items()})
        return out

    def with_(self, **changes) -> "CalibrationJob":
        return replace(self, **changes)
