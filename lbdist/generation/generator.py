"""`Generator`: the one engine every front end calls, on one device or over a sequence-parallel worker group.

    from lbdist import Generator, GeneratorConfig, GenerationRequest

    gen = Generator("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", GeneratorConfig(adapters={"wan-n5": "adapters/wan-n5"}))
    result = gen.generate(GenerationRequest("a cat surfing", schedule="5", adapters="wan-n5"),
                          progress=lambda done, total: print(done, "/", total))
    result.frames, result.timings, result.calls, result.steps

With `GeneratorConfig(sp_degree=N)` the model is loaded on N Ray actors (one GPU each) that run every request
together, split as CFG x Ulysses x ring by the layout rule (`lbdist.parallel.layout`: CFG-parallel first for a
two-branch model on an even group, then Ulysses as far as the heads allow, then ring) unless the config fixes
the degrees; the VAE decode is split over every rank. Progress comes back from rank 0 and a cancel request stops
every rank at the same step boundary. `GeneratorConfig(compile=True)` compiles the transformer blocks. The CLI,
the demo, the benchmarks, Serve replicas, batch rendering and the cluster jobs all generate through this class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..bridge.resident import CacheLimits
from .request import GenerationRequest, GenerationResult, ModelInfo

POLL_S = 0.05


@dataclass(frozen=True)
class GeneratorConfig:
    """Where and how a `Generator` runs.

    Attributes:
        device: "auto" (cuda if present), "cpu", "cuda", "cuda:N": the device of a one-process generator.
        dtype: "auto" (bf16 on GPU, fp32 on CPU), "bfloat16", "float16", "float32".
        sp_degree: ranks (GPUs) of the worker group; 1 runs in this process.
        cfg_degree, ulysses_degree, ring_degree: the split of those ranks, `cfg * ulysses * ring == sp_degree`.
            None (default) lets the layout rule choose (`lbdist.parallel.layout.choose_group_layout`): cfg 2 for a
            model with two guidance branches (Wan) on an even group, Ulysses as far as the head count allows, ring
            for the rest. Values given are kept and the rule fills the others.
        compile: compile the transformer blocks (`torch.compile`, beneath the bridge hooks): True for the default
            `CompileConfig()`, a `CompileConfig`, or None / False for eager. The first request pays the compile.
        parallel_vae: split the VAE decode over the group's ranks (sp_degree > 1), equal to one rank's decode
            within float tolerance (`lbdist.parallel.vae`).
        adapters: adapter-set names -> references (directory, fsspec URI, Hub id) that requests may name.
        cache: how many adapter sets (or bytes) stay resident per rank (LRU).
        threads: torch CPU threads of this process (None: leave torch's setting; see lbdist.runtime).
        worker: extra `WorkerGroupConfig` fields for sp_degree > 1 (gpus_per_worker, backend, cpus_per_worker,
            call_timeout_s, ...).
    """

    device: str = "auto"
    dtype: str = "auto"
    sp_degree: int = 1
    ulysses_degree: int | None = None
    ring_degree: int | None = None
    cfg_degree: int | None = None
    compile: Any = None
    parallel_vae: bool = True
    adapters: Mapping[str, str] = field(default_factory=dict)
    cache: CacheLimits = field(default_factory=CacheLimits)
    threads: int | None = None
    worker: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from .preflight import check_device, check_dtype

        check_device(self.device)
        check_dtype(self.dtype)
        if type(self.sp_degree) is not int or self.sp_degree < 1:
            raise ValueError(f"sp_degree must be an integer >= 1, got {self.sp_degree!r}")
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {self.threads!r}")
        if not isinstance(self.cache, CacheLimits):
            raise ValueError(f"cache must be a CacheLimits, got {type(self.cache).__name__} {self.cache!r:.80}")
        for name in ("adapters", "worker"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r:.80}")
        bad = {k: v for k, v in dict(self.adapters).items() if not (isinstance(k, str) and isinstance(v, str) and k and v)}
        if bad:
            raise ValueError(f"adapters must map names to references (non-empty strings), got {bad}")
        object.__setattr__(self, "adapters", dict(self.adapters))
        object.__setattr__(self, "worker", dict(self.worker))
        object.__setattr__(self, "compile", _compile_config(self.compile))
        if not isinstance(self.parallel_vae, bool):
            raise ValueError(f"parallel_vae must be true or false, got {self.parallel_vae!r}")
        self._check_group()

    def _check_group(self) -> None:
        """Degree arithmetic and worker options, before anything starts. A one-process generator refuses degrees
        (they would be ignored); worker options must be WorkerGroupConfig fields either way (typos)."""
        from dataclasses import fields as dataclass_fields

        from ..parallel.config import WorkerGroupConfig

        allowed = {f.name for f in dataclass_fields(WorkerGroupConfig)}
        allowed -= {"num_workers", "ulysses_degree", "ring_degree", "cfg_degree", "parallel_vae"}
        unknown = sorted(map(str, set(self.worker) - allowed))
        if unknown:
            raise ValueError(f"worker options {unknown} are not WorkerGroupConfig fields; allowed: {sorted(allowed)}")
        if self.sp_degree > 1:
            self.layout()  # the degrees' arithmetic (the model's heads are checked once it is known)
        elif any(d not in (None, 1) for d in (self.ulysses_degree, self.ring_degree, self.cfg_degree)):
            raise ValueError(f"cfg_degree={self.cfg_degree!r}, ulysses_degree={self.ulysses_degree!r}, ring_degree="
                             f"{self.ring_degree!r} only apply to a worker group: set sp_degree > 1 (the number of "
                             "ranks), or leave them out")

    def layout(self, model=None):
        """The group's `GroupLayout` for `model` (a reference or factory; None: degrees alone, model unknown)."""
        from ..parallel.layout import choose_group_layout, describe

        return choose_group_layout(self.sp_degree, describe(model) if model is not None else None,
                                   cfg=self.cfg_degree, ulysses=self.ulysses_degree, ring=self.ring_degree)

    def group_config(self, model=None):
        from ..parallel.config import WorkerGroupConfig

        layout = self.layout(model)
        return WorkerGroupConfig(num_workers=self.sp_degree, ulysses_degree=layout.ulysses, ring_degree=layout.ring,
                                 cfg_degree=layout.cfg, parallel_vae=self.parallel_vae, **self.worker)


def _compile_config(value):
    from .compile import CompileConfig

    if value is None or value is False:
        return None
    if value is True:
        return CompileConfig()
    if isinstance(value, CompileConfig):
        return value
    raise ValueError(f"compile must be True, False, None or a CompileConfig, got {value!r}")


class Generator:
    """Runs `GenerationRequest`s on one model: in this process, or over a worker group (`sp_degree > 1`).

    Args:
        model: a model reference (`tiny:wan`, `toy:flux`, a folder, a Hub id), a loaded pipeline
            (`load_pipeline(...)` or a bare diffusers pipeline; one process only) or a `PipelineFactory`.
        config: `GeneratorConfig`.
    """

    def __init__(self, model, config: GeneratorConfig | None = None):
        self.config = config = config or GeneratorConfig()
        if not isinstance(config, GeneratorConfig):
            raise ValueError(f"config must be a GeneratorConfig, got {type(config).__name__}")
        self.engine = None
        self.group = None
        self._preflight = None
        from ..parallel.layout import GroupLayout

        self.layout = GroupLayout()  # cfg x ulysses x ring of the group (1 x 1 x 1 in this process)
        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        options = {"adapters": config.adapters, "cache_limits": config.cache, "compile": config.compile}
        if config.sp_degree == 1:
            from .engine import Engine
            from .loading import load_pipeline

            loaded = load_pipeline(model, config.device, config.dtype) if isinstance(model, str) else _unfactory(model)
            self.engine = Engine(loaded, **options)
            self.info: ModelInfo = self.engine.info
        else:
            from ..parallel import WorkerGroup
            from . import preflight

            group_config = config.group_config(model)
            self.layout = GroupLayout(group_config.cfg_degree, group_config.ulysses_degree, group_config.ring_degree)
            preflight.check_heads(model, group_config.ulysses_degree)  # from the config alone, before any actor
            self._preflight = preflight.skeleton(model) if isinstance(model, str) else None  # for token checks
            self.group = WorkerGroup(group_config)
            self.group.start()
            try:
                self.info = self.group.load(_factory(model, config), options)["info"]
            except BaseException:
                self.group.shutdown()
                raise

    @property
    def pipe(self):
        """The pipeline of a one-process generator (benchmarks attach counters to it)."""
        if self.engine is None:
            raise ValueError("a worker-group generator has no pipeline in this process; its ranks hold it")
        return self.engine.pipe

    def generate(self, request: GenerationRequest | str, *, progress=None, cancel=None, keep_latents: bool = False,
                 **fields) -> GenerationResult:
        """Generate one request (or a prompt with request fields as keywords).

        progress: called as `progress(steps_done, total_steps)` after each step (from this process's thread).
        cancel: called between steps; returning True stops the generation at that step boundary on every rank
            and raises `GenerationCancelled`.
        """
        if isinstance(request, str):
            request = GenerationRequest(request, **fields)
        elif fields:
            raise ValueError("pass either a GenerationRequest or a prompt with request fields, not both")
        elif not isinstance(request, GenerationRequest):
            raise ValueError(f"request must be a GenerationRequest or a prompt, got {type(request).__name__}")
        request = request.resolve(self.info)
        if self.engine is not None:
            return self.engine.run(request, progress=progress, cancel=cancel, keep_latents=keep_latents)
        from .preflight import check_tokens

        check_tokens(self._preflight, request, self.info, self.layout.sp)  # each half's split, before any rank works
        return self._group_generate(request, progress, cancel, keep_latents)

    def _group_generate(self, request, progress, cancel, keep_latents) -> GenerationResult:
        import ray

        from ..parallel.control import GenerationControl

        control = ray.remote(num_cpus=0)(GenerationControl).remote()
        try:
            asked = cancel is not None and cancel()  # cancelled before it started: stops at the first boundary
            if asked:
                ray.get(control.cancel.remote())
            refs = self.group.submit("generate", request, control, keep_latents)
            seen = 0
            while True:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
                done, total, _ = ray.get(control.status.remote())
                if progress is not None and done > seen:
                    for step in range(seen + 1, done + 1):
                        progress(step, total)
                    seen = done
                if cancel is not None and not asked and cancel():
                    ray.get(control.cancel.remote())
                    asked = True
                if len(ready) == len(refs):
                    break
            return self.group.collect(refs)[0]
        finally:
            ray.kill(control)

    # --- adapter sets resident without generating (for servers that choose sets per request) ----------------
    def preload_adapters(self, name: str, ref: str | None = None) -> bool:
        """Make adapter set `name` (reference `ref`, or the one configured) resident on every rank; True if it was
        injected now, False if it already was. See `Engine.preload_adapters`."""
        return self._on_engines("preload_adapters", name, ref)

    def evict_adapters(self, name: str) -> bool:
        """Remove adapter set `name` from every rank (True if it was resident)."""
        return self._on_engines("evict_adapters", name)

    def transformer_facts(self) -> dict:
        """The transformer's class names and config digest (what adapter sets record), and the adapter-set
        injections of rank 0 so far."""
        return self._on_engines("transformer_facts")

    def _on_engines(self, method: str, *args):
        if self.engine is not None:
            return getattr(self.engine, method)(*args)
        return self.group.run(_engine_method, method, *args)[0]

    def close(self) -> None:
        """Stop the worker group (if any) and free its GPUs; a one-process generator drops its pipeline."""
        if self.group is not None:
            self.group.shutdown()
            self.group = None
        self.engine = None

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _engine_method(worker, method: str, *args):
    """Run on every rank of a group: `worker.engine.<method>(*args)`."""
    return getattr(worker.engine, method)(*args)


def _unfactory(model):
    from ..parallel.config import PipelineFactory
    from .loading import LoadedPipeline

    if isinstance(model, PipelineFactory):
        model = model.build()
    if isinstance(model, LoadedPipeline) or hasattr(model, "transformer"):
        return model
    raise ValueError(f"model must be a reference string, a loaded pipeline or a PipelineFactory, got {type(model).__name__}")


def _factory(model, config: GeneratorConfig):
    from ..parallel.config import PipelineFactory

    if isinstance(model, PipelineFactory):
        return model
    if isinstance(model, str):
        return PipelineFactory("lbdist.generation.loading:load_pipeline", {"source": model, "dtype": config.dtype})
    raise ValueError("a worker-group Generator (sp_degree > 1) needs a model reference string or a PipelineFactory, so "
                     f"that every rank can build the model itself; got {type(model).__name__}")
