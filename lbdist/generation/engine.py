"""`Engine`: runs `GenerationRequest`s on one loaded pipeline in this process (one device, or one rank of a group).

The engine applies the bridge hooks once and reconfigures them per request (schedule, adapter set), keeps adapter
sets resident in the transformer's LRU cache (`apply_bridge`), times each stage, reports progress after every
denoising step and checks for cancellation at every step boundary, through the pipeline's own
`callback_on_step_end`. Every front end reaches it through `lbdist.Generator`; the ranks of a worker group each
run one.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Mapping

import numpy as np
import torch

from ..bridge import BridgeConfig, CacheLimits, apply_bridge, reset_bridge
from ..parallel.cfg import prepare_call
from .loading import LoadedPipeline, model_info
from .request import GenerationCancelled, GenerationRequest, GenerationResult, ModelInfo

Progress = Callable[[int, int], None]   # (steps done, total steps)
Cancel = Callable[[], bool]             # True: stop at this step boundary


class _Clock:
    """Wall time spent inside some modules' forward calls (CUDA synchronised around each call)."""

    def __init__(self, cuda: bool):
        self.cuda, self.total, self.first, self._t = cuda, 0.0, None, 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def pre(self, *_args, **_kw):
        self._t = self._now()
        self.first = self._t if self.first is None else self.first

    def post(self, *_args, **_kw):
        self.total += self._now() - self._t

    @contextmanager
    def on(self, modules):
        handles = []
        for m in modules:
            handles += [m.register_forward_pre_hook(self.pre), m.register_forward_hook(self.post, always_call=True)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def on_method(self, owner, name: str):
        """Time calls of `owner.<name>` (an instance attribute shadowing the method while active)."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self.pre()
            try:
                return original(*args, **kwargs)
            finally:
                self.post()

        setattr(owner, name, timed)
        try:
            yield self
        finally:
            delattr(owner, name)


class Engine:
    """One pipeline in this process, ready to run requests.

    Args:
        loaded: the pipeline (`load_pipeline(...)`) or a bare diffusers pipeline.
        adapters: adapter-set names -> references (directory, URI, Hub id); a request's `adapters` is looked up
            here first, and used as a reference itself otherwise.
        cache_limits: how many adapter sets (or bytes) stay resident on the final block.
        compile: a `CompileConfig` to compile the transformer's blocks (before the bridge hooks; see
            `lbdist.generation.compile`), or None (eager).
    """

    def __init__(self, loaded, *, adapters: Mapping[str, str] | None = None,
                 cache_limits: CacheLimits | None = None, compile=None):
        if not isinstance(loaded, LoadedPipeline):
            loaded = LoadedPipeline(loaded, model_info(loaded).family, "", {})
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.info: ModelInfo = model_info(self.pipe, loaded.call_defaults, loaded.source)
        self.adapters = dict(adapters or {})
        self.cache_limits = cache_limits
        if compile is not None:
            from .compile import compile_blocks

            compile_blocks(self.pipe.transformer, config=compile)
        self.runtime = apply_bridge(self.pipe, config=None, cache_limits=cache_limits)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)

    @property
    def adapter_cache(self):
        return self.runtime.adapter_cache

    # --- adapter sets kept resident without generating (Serve's @serve.multiplexed loads and unloads them) -----
    def preload_adapters(self, name: str, ref: str | None = None) -> bool:
        """Make adapter set `name` resident (checked against this model and its own schedule) without generating;
        `ref` (directory) registers or replaces the reference of `name`. True if it was injected now, False if it
        was already resident. Requests naming `name` then switch to it without loading anything."""
        from ..bridge.adapter_set import AdapterSet

        if ref is not None:
            self.adapters[name] = ref
        cache = self.adapter_cache
        if name in cache:
            cache.get(name, None)  # most recently used
            return False
        adapters = AdapterSet.load(self.adapters.get(name, name))
        adapters.check_fits(self.pipe.transformer, self.info.family, adapters.schedule)
        cache.get(name, lambda: adapters)
        return True

    def evict_adapters(self, name: str) -> bool:
        """Remove adapter set `name` from the final block (True if it was resident)."""
        resident = self.adapter_cache.sets.pop(name, None)
        if resident is None:
            return False
        resident.remove()
        return True

    def transformer_facts(self) -> dict:
        """What adapter sets are matched with: the transformer's class names (with bases) and config digest."""
        from ..bridge.adapter_set import config_digest

        transformer = self.pipe.transformer
        return {"transformer_classes": [c.__name__ for c in type(transformer).__mro__ if c.__name__ != "object"],
                "config_digest": config_digest(transformer), "adapter_injections": self.adapter_cache.injections}

    def bridge_config(self, request: GenerationRequest) -> BridgeConfig | None:
        schedule = request.bridge_schedule()
        if schedule is None:
            return None
        ref = None if request.adapters is None else self.adapters.get(request.adapters, request.adapters)
        branches = self.info.branches
        if len(branches) > 1 and not (request.guidance_scale or 0) > 1.0:
            branches = branches[:1]  # two-branch pipelines run only the conditional branch without guidance
        return BridgeConfig(schedule, adapters=ref, adapter_id=request.adapters, allow_uncovered=request.allow_uncovered,
                            branches=branches)

    def run(self, request: GenerationRequest, *, progress: Progress | None = None, cancel: Cancel | None = None,
            keep_latents: bool = False) -> GenerationResult:
        """Generate one request (resolved against this model first); raises GenerationCancelled if cancelled."""
        if not isinstance(request, GenerationRequest):
            raise ValueError(f"request must be a GenerationRequest, got {type(request).__name__}")
        request = request.resolve(self.info)
        # the runtime apply_bridge returns: a fresh one if something removed the hooks since (pair recording does)
        self.runtime = apply_bridge(self.pipe, config=self.bridge_config(request), cache_limits=self.cache_limits)
        total, final = request.num_inference_steps, {}

        def on_step_end(pipe, i, t, tensors):
            if keep_latents:
                final["latents"] = tensors["latents"].detach().clone()
            if progress is not None:
                progress(i + 1, total)
            if cancel is not None and i + 1 < total and cancel():
                raise GenerationCancelled(i + 1, total)
            return {}

        kwargs = request.call_kwargs(self.info)
        prepare_call(self.pipe, {**kwargs, "prompt": request.prompt})  # CFG-parallel (if on): both branches?
        kwargs.update(callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
        frames, timings = self._call(request, kwargs)
        runtime = self.runtime
        first = runtime.trace[0][1] if runtime.trace else "cond"
        steps = [kind for _, branch, kind in runtime.trace if branch == first] or ["full"] * total
        return GenerationResult(frames=frames, request=request, timings=timings, calls=dict(runtime.stats),
                                steps=steps, latents=final.get("latents"))

    def _call(self, request: GenerationRequest, kwargs: dict) -> tuple[np.ndarray, dict]:
        pipe = self.pipe
        cuda = pipe.transformer.device.type == "cuda"
        text = [m for name in ("text_encoder", "text_encoder_2") if (m := getattr(pipe, name, None)) is not None]
        self.runtime.trace = []
        t0 = time.perf_counter()
        with ExitStack() as stack:
            tt = stack.enter_context(_Clock(cuda).on([pipe.transformer]))
            te = stack.enter_context(_Clock(cuda).on(text))
            dec = stack.enter_context(_Clock(cuda).on_method(pipe.vae, "decode"))
            try:
                out = pipe(prompt=request.prompt, generator=torch.Generator("cpu").manual_seed(request.seed),
                           output_type="np", **kwargs)
            except BaseException:
                reset_bridge(pipe)  # an interrupted call leaves the branch caches mid-schedule
                raise
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        frames = out.frames[0] if self.info.is_video else out.images
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim == 3:
            frames = frames[None]
        denoise = (dec.first or t0 + total) - (tt.first or t0)
        timings = {"text_encoders": te.total, "denoise": denoise, "decode": dec.total, "transformer": tt.total,
                   "total": total}
        return frames, {k: round(v, 6) for k, v in timings.items()}
