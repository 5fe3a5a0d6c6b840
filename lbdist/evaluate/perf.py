"""Issue 15's benchmark logic (`tools/bench_perf.py` sweeps it): real-size pipelines through `Engine` and worker
groups, eager and compiled, CFG-parallel and Ulysses layouts, transformer-call costs, and VAE decode variants.

Every function takes a `PerfSettings`; the rank-side functions (`rank_runs`, `rank_vae`) run inside worker-group
actors through `WorkerGroup.run`. Derived numbers, target checks and tables are in `perf_report`.

Whole pipeline = `realsize.realsize_pipeline` (the size's transformer and VAE, seeded random weights) with text
encoders of the released sizes swapped in (`TEXT`: a T5-XXL encoder for Wan, a Llama-3-8B and CLIP-L for
HunyuanVideo; word tokenizer, random weights), so text encoding costs what it costs on the real models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from .realsize import lookup
from .timing import free_cuda_cache, median_ms

# Text encoders of the released sizes (random weights; the word tokenizer's vocabulary: embeddings cost nothing).
TEXT = {"wan": dict(t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                            feed_forward_proj="gated-gelu")),
        "hunyuan_video": dict(llama=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8),
                              clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768))}
WORDS = "a red circle moves left blue square up green triangle right yellow down".split()
PHASES = ("layout", "calls", "pipeline", "vae")


@dataclass(frozen=True)
class PerfSettings:
    """One benchmark call's settings (the command line of tools/bench_perf.py).

    device, dtype: where and in which dtype models are built ("cuda", "bfloat16"; the quick mode: "cpu", "float32").
    steps, intervals, runs: denoising steps; bridge intervals N; which pipeline runs ("full", "N6", ...).
    variants: "eager" and/or "compiled"; layouts: on >1 GPU "rule" (the layout rule's split) and/or "ulysses".
    lora_rank: rank of the random resident adapters; repeats, warmup, vae_repeats: timing medians.
    compile_backend, compile_mode: `CompileConfig` of the compiled variant; call_timeout: worker-group calls.
    quick: CPU stand-ins on gloo ranks.
    """

    device: str = "cuda"
    dtype: str = "bfloat16"
    steps: int = 50
    intervals: tuple[int, ...] = (6, 7)
    runs: tuple[str, ...] = ("full", "N6", "N7")
    variants: tuple[str, ...] = ("eager", "compiled")
    layouts: tuple[str, ...] = ("rule", "ulysses")
    lora_rank: int = 32
    repeats: int = 5
    warmup: int = 2
    vae_repeats: int = 3
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    call_timeout: float = 900.0
    quick: bool = False


def _real_text(pipe, family: str) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, T5Config, T5EncoderModel

    sizes, vocab = TEXT[family], len(pipe.tokenizer)
    if "t5" in sizes:
        pipe.text_encoder = T5EncoderModel(T5Config(vocab_size=vocab, **sizes["t5"]))
    if "llama" in sizes:
        pipe.text_encoder = LlamaModel(LlamaConfig(vocab_size=vocab, **sizes["llama"]))
        pipe.text_encoder_2 = CLIPTextModel(CLIPTextConfig(vocab_size=len(pipe.tokenizer_2), eos_token_id=1,
                                                           max_position_embeddings=77, **sizes["clip"]))


def real_pipeline(name: str, device: str = "cuda", dtype: str = "bfloat16", steps: int = 50):
    """`lbdist.evaluate.realsize.realsize_pipeline` (the size's transformer and VAE, seeded random weights) with
    text encoders of the released sizes swapped in (`tiny-*` stand-ins keep their small ones)."""
    from .realsize import building, realsize_pipeline

    loaded = realsize_pipeline(name, device, dtype, steps)
    spec, _ = lookup(name)
    if not name.startswith("tiny-"):
        torch.manual_seed(1)  # every rank builds the same weights
        with building(device, getattr(torch, dtype)):
            _real_text(loaded.pipe, spec.family)
        for module in (loaded.pipe.text_encoder, getattr(loaded.pipe, "text_encoder_2", None)):
            if module is not None:
                module.eval().requires_grad_(False)
    return loaded


def prompt(name: str) -> str:
    from .realsize import full_prompt

    return full_prompt(lookup(name)[1].text_tokens)


# --- phase: layout -----------------------------------------------------------------------------------------
def phase_layout(names) -> dict:
    from ..parallel.layout import ModelShape, choose_group_layout

    out = {}
    for name in names:
        spec, size = lookup(name)
        shape = ModelShape(spec.family, len(spec.branches), int(size.config["num_attention_heads"]))
        out[name] = {str(world): choose_group_layout(world, shape).label() for world in (1, 2, 4, 8)}
    return out


# --- phase: calls ------------------------------------------------------------------------------------------
def _median_ms(fn, repeats: int, warmup: int) -> float:
    return round(median_ms(fn, repeats, warmup)[0], 3)


def phase_calls(name: str, settings) -> dict:
    from ..generation.compile import CompileConfig, CompileCounter, compile_blocks
    from ..models import get_spec
    from .realsize import build_transformer, step_inputs

    transformer = build_transformer(name, settings.device, getattr(torch, settings.dtype))
    latents, kwsettings_at = step_inputs(name, transformer, settings.device, getattr(torch, settings.dtype))
    kwsettings, spec = kwsettings_at(latents, 0.5), get_spec(transformer)

    def full():
        with torch.no_grad():
            transformer(**kwsettings)

    def final():
        saved = spec.only_final_block(transformer)
        try:
            full()
        finally:
            transformer._modules.update(saved)

    out = {"eager": {"full_ms": _median_ms(full, settings.repeats, settings.warmup),
                     "final_ms": _median_ms(final, settings.repeats, settings.warmup)}}
    if "compiled" in settings.variants:
        compile_blocks(transformer, config=CompileConfig(backend=settings.compile_backend, mode=settings.compile_mode))
        full(), final()  # compile (full graph, then the final block alone: same graph)
        with CompileCounter() as counter:
            out["compiled"] = {"full_ms": _median_ms(full, settings.repeats, settings.warmup),
                               "final_ms": _median_ms(final, settings.repeats, settings.warmup)}
        out["compiled"]["compiles_after_warmup"] = counter.count
    for variant in out.values():
        variant["ceiling"] = {str(n): _ceiling(settings.steps, n, variant["full_ms"], variant["final_ms"])
                              for n in settings.intervals}
    return out


def _ceiling(steps: int, n: int, t_full: float, t_final: float) -> float:
    full_n = len(range(0, steps, n))
    return round(steps * t_full / (full_n * t_full + (steps - full_n) * t_final), 3)


# --- phase: pipeline ---------------------------------------------------------------------------------------
def adapter_sets(name: str, settings, folder: Path) -> dict:
    """Random rank-`lora_rank` adapter sets for every N (and a 4-step warm-up set), saved under `folder`."""
    from lbdist import Schedule
    from ..bridge import LoraSettings, random_adapter_set

    spec, size = lookup(name)
    with torch.device("meta"):  # shapes only: no weights on the driver
        transformer = spec.transformer_class(**size.config)
    lora = LoraSettings(settings.lora_rank, 2.0 * settings.lora_rank, spec.lora_targets)
    plans = {"warm": Schedule.periodic(4, 2)}
    plans.update({f"n{n}": Schedule.periodic(settings.steps, n) for n in settings.intervals if f"N{n}" in settings.runs})
    out = {}
    for key, schedule in plans.items():
        random_adapter_set(transformer, schedule, lora=lora).save(folder / key)
        out[key] = str(folder / key)
    return out


def requests(name: str, settings):
    from ..generation import GenerationRequest

    text = prompt(name)
    warm = GenerationRequest(text, num_inference_steps=4, schedule="2", adapters="warm")
    timed = [("full", GenerationRequest(text, num_inference_steps=settings.steps))]
    timed += [(f"N{n}", GenerationRequest(text, num_inference_steps=settings.steps, schedule=str(n),
                                          adapters=f"n{n}")) for n in settings.intervals]
    return warm, [(label, request) for label, request in timed if label in settings.runs]


def rank_runs(worker, warm, timed) -> dict:
    """On every rank of a group: the warm-up request, then the timed ones under a compile counter."""
    from ..generation.compile import CompileCounter

    worker.generate(warm)
    runs = {}
    with CompileCounter() as counter:
        for label, request in timed:
            result = worker.generate(request)
            if result is not None:
                runs[label] = {"timings": result.timings, "calls": result.calls}
    return {"runs": runs, "compiles_after_warmup": counter.count}


def compile_config(variant: str, settings):
    from ..generation.compile import CompileConfig

    if variant != "compiled":
        return None
    return CompileConfig(backend=settings.compile_backend, mode=settings.compile_mode)


def pipeline_one_gpu(name: str, variant: str, adapters: dict, settings) -> dict:
    from ..generation.engine import Engine

    engine = Engine(real_pipeline(name, settings.device, settings.dtype, settings.steps), adapters=adapters,
                    compile=compile_config(variant, settings))
    warm, timed = requests(name, settings)
    try:
        return rank_runs(SimpleNamespace(generate=engine.run), warm, timed)  # the Engine as a "worker"
    finally:
        del engine
        free_cuda_cache()


def pipeline_group(name: str, gpus: int, layout, variant: str, adapters: dict, settings) -> dict:
    from ..parallel import PipelineFactory, WorkerGroup, WorkerGroupConfig

    quick = settings.quick
    config = WorkerGroupConfig(num_workers=gpus, cfg_degree=layout.cfg, ulysses_degree=layout.ulysses,
                               ring_degree=layout.ring, backend="gloo" if quick else "auto",
                               gpus_per_worker=0 if quick else None, call_timeout_s=settings.call_timeout)
    factory = PipelineFactory("lbdist.evaluate.perf:real_pipeline",
                              {"name": name, "dtype": settings.dtype, "steps": settings.steps})
    warm, timed = requests(name, settings)
    with WorkerGroup(config) as group:
        group.load(factory, {"adapters": adapters, "compile": compile_config(variant, settings)})
        ranks = group.run(rank_runs, warm, timed)
    return {**ranks[0], "compiles_after_warmup": max(r["compiles_after_warmup"] for r in ranks),
            "layout": layout.label()}


def layouts(name: str, gpus: int, which) -> list:
    """The rule's layout ("rule"), and for a two-branch model plain Ulysses (cfg 1, "ulysses") for comparison."""
    from ..parallel.layout import GroupLayout, ModelShape, choose_group_layout

    spec, size = lookup(name)
    shape = ModelShape(spec.family, len(spec.branches), int(size.config["num_attention_heads"]))
    rule = choose_group_layout(gpus, shape)
    chosen = [rule] if "rule" in which else []
    if "ulysses" in which and rule.cfg > 1 and shape.heads % gpus == 0:
        chosen.append(GroupLayout(1, gpus, 1))
    return chosen


def phase_pipeline(name: str, gpus: int, settings, folder: Path) -> dict:
    adapters = adapter_sets(name, settings, folder)
    out = {}
    for variant in settings.variants:
        if gpus == 1:
            out[f"1gpu/{variant}"] = pipeline_one_gpu(name, variant, adapters, settings)
            continue
        for layout in layouts(name, gpus, settings.layouts):
            key = f"{gpus}gpu/{layout.label()}/{variant}"
            out[key] = pipeline_group(name, gpus, layout, variant, adapters, settings)
    return out


# --- phase: vae --------------------------------------------------------------------------------------------
def build_vae(name: str, device, dtype):
    """The size's VAE (`RealSize.vae`: the released config for real sizes) with seeded random weights."""
    import diffusers

    spec, size = lookup(name)
    pipe = spec.build_pipeline(dict(spec.tiny_config), words=WORDS, seed=0, text_layers=1)  # small: for its VAE class
    torch.manual_seed(0)
    vae = getattr(diffusers, type(pipe.vae).__name__)(**dict(size.vae)) if size.vae else pipe.vae
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def latents(name: str, vae, device, dtype):
    _, size = lookup(name)
    s, t = int(vae.config.get("scale_factor_spatial") or vae.config.get("spatial_compression_ratio")), \
        int(vae.config.get("scale_factor_temporal") or vae.config.get("temporal_compression_ratio"))
    channels = vae.config.get("z_dim") or vae.config.get("latent_channels")
    shape = (1, channels, (size.frames - 1) // t + 1, size.height // s, size.width // s)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _decode_timed(vae, z, settings) -> tuple[float, torch.Tensor]:
    def run():
        with torch.no_grad():
            return vae.decode(z).sample

    ms = _median_ms(run, settings.vae_repeats, 1)
    return ms, run().float()


def _error(out: torch.Tensor, reference: torch.Tensor) -> dict:
    mse = float((out - reference).pow(2).mean())  # pixels in [-1, 1]: peak-to-peak 2
    return {"max_abs": round(float((out - reference).abs().max()), 6),
            "psnr_db": None if mse == 0 else round(10 * float(torch.log10(torch.tensor(4.0 / mse))), 2)}


def phase_vae_one(name: str, settings) -> dict:
    from ..generation.compile import CompileCounter
    from ..parallel.vae import VaeDecodeConfig, apply_vae_speedups

    variants = {"fp32": VaeDecodeConfig(), settings.dtype: VaeDecodeConfig(dtype=settings.dtype),
                f"{settings.dtype}+tiling": VaeDecodeConfig(dtype=settings.dtype, tiling=True),
                f"{settings.dtype}+compile": VaeDecodeConfig(dtype=settings.dtype, compile=True)}
    out, reference = {}, None
    for label, config in variants.items():
        vae = build_vae(name, settings.device, torch.float32)
        apply_vae_speedups(vae, config=config)
        with CompileCounter() as counter:
            ms, sample = _decode_timed(vae, latents(name, vae, settings.device, torch.float32), settings)
        reference = sample if reference is None else reference
        out[label] = {"decode_ms": round(ms, 2), "compiles": counter.count, **_error(sample, reference)}
        del vae, sample
    return out


def rank_vae(worker, name: str, dtype: str, repeats: int) -> dict:
    from ..parallel.vae import apply_parallel_vae

    settings = SimpleNamespace(vae_repeats=repeats)
    vae = build_vae(name, worker.device, getattr(torch, dtype))
    z = latents(name, vae, worker.device, getattr(torch, dtype))
    whole_ms, whole = _decode_timed(vae, z, settings)
    split = apply_parallel_vae(vae)
    split_ms, parted = _decode_timed(vae, z, settings)
    return {"one_gpu_ms": round(whole_ms, 2), "split_ms": round(split_ms, 2), "speedup": round(whole_ms / split_ms, 3),
            "split_calls": split.calls if split else 0, **_error(parted, whole)}


def phase_vae_group(name: str, gpus: int, settings) -> dict:
    from ..parallel import WorkerGroup, WorkerGroupConfig

    config = WorkerGroupConfig(num_workers=gpus, backend="gloo" if settings.quick else "auto",
                               gpus_per_worker=0 if settings.quick else None, call_timeout_s=settings.call_timeout)
    with WorkerGroup(config) as group:
        return group.run(rank_vae, name, settings.dtype, settings.vae_repeats)[0]


def run_phase(phase: str, name: str, gpus: tuple[int, ...], settings: PerfSettings, folder: Path) -> dict:
    """One phase ("calls", "pipeline" or "vae") of one model over the GPU counts `gpus` (calls: 1 GPU only)."""
    if phase == "calls":
        return phase_calls(name, settings)
    if phase == "pipeline":
        out = {}
        for count in gpus:
            out.update(phase_pipeline(name, count, settings, folder))
        return out
    if phase != "vae":
        raise ValueError(f"phase must be one of {PHASES[1:]}, got {phase!r}")
    out = {"1gpu": phase_vae_one(name, settings)} if 1 in gpus else {}
    out.update({f"{count}gpu": phase_vae_group(name, count, settings) for count in gpus if count > 1})
    return out
