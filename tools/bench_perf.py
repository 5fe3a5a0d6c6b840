r"""Issue 15 on the GPU: CFG-parallel, split VAE decode, compiled blocks, whole pipeline against the loop.

    python tools/bench_perf.py --quick        # CPU smoke test: tiny sizes, 2 gloo ranks, aot_eager (~9 min here)
    python tools/bench_perf.py --table tools/results/bench_perf_quick.json        # print a report's tables

Models: real-size configs of each family's `ModelSpec.real_sizes`, random bf16 weights built on the GPU:
`wan-14b` (Wan2.1-14B, 480x832x81, true CFG: two transformer calls a step) and `hunyuan-video-544p`
(HunyuanVideo, 544x960x49, one call). Whole pipeline = the family's diffusers pipeline with text encoders of the
released sizes (a T5-XXL encoder for Wan; a Llama-3-8B and CLIP-L for HunyuanVideo; word tokenizer) and the
released VAE configs, through lbdist's `Engine` (1 GPU) or a `WorkerGroup` (>1 GPU). Phases (`--phases`):
- layout: the layout rule's split per model for 1, 2, 4, 8 ranks (no compute).
- calls (1 GPU): one transformer call, full and final-block-only (a bridged call), eager and compiled; dynamo
  compilations counted after warm-up (must be 0); the bridge's ceiling per N from those costs.
- pipeline: 50-step generations (`--runs full N6 N7`): full compute, and bridged at N=6, 7 with random resident
  rank-32 adapter sets; text / loop (denoise) / decode / total seconds and compilations after a warm-up
  request; `--variants eager compiled`; on >1 GPU (`--layouts`) the rule's split (Wan: cfg 2) and, for
  two-branch models, Ulysses alone for comparison. The VAE decode is split over the ranks there.
- vae: decode of the size's latents: 1 GPU fp32 (reference), bf16, bf16 + tiling, bf16 + compile with the error
  against fp32; >1 GPU the split decode (lbdist.parallel.vae) against one GPU, both bf16.
The JSON (`--out`, default $OUT/bench_perf.json) is read first and updated after every phase and model, each
entry stamped with its card, commit and date, so calls accumulate into one report. Derived numbers
(`tools/perf_report.py`) are checked against `tools/targets.json` if present, else the issue's: Wan2.1-14B
step at 2 GPUs >= 1.9x one GPU; whole-pipeline bridged speedup >= 0.9x the loop's (1 and 2 GPUs); compiled full
step >= 1.15x eager with the compiled bridge >= 0.97 of its ceiling; HunyuanVideo bridge x 2 GPUs whole
pipeline >= 10x one GPU full compute. The peers' published figures are stored beside them.

GPU plan (not run yet; estimates from the measured H100/H200 calls in /work/shared/STACK.md: Wan-14B 480p 3.2 s
a call, HunyuanVideo 544p 2.4 s a step; each call builds the models, ~1-2 min): env and wheels as in
tools/bench_sp.py (NCCL_NVLS_ENABLE=0 ..., PYTHONPATH=$PWD, LBDIST_COMMIT), `A="--out $OUT/perf.json"`, then
    1 GPU  --models wan-14b --gpus 1 --phases layout calls vae                          (~5 min)
    1 GPU  --models wan-14b --gpus 1 --phases pipeline --variants eager --runs full     (~7 min)
    1 GPU  --models wan-14b --gpus 1 --phases pipeline --variants eager --runs N6 N7    (~5 min)
    1 GPU  the same two with --variants compiled                                        (~13 min)
    1 GPU  --models hunyuan-video-544p --gpus 1 --phases calls vae pipeline --variants eager   (~8 min)
    1 GPU  --models hunyuan-video-544p --gpus 1 --phases pipeline --variants compiled   (~7 min)
    2 GPUs --models wan-14b --gpus 2 --phases pipeline vae --layouts rule --variants eager     (~8 min)
    2 GPUs --models wan-14b --gpus 2 --phases pipeline --layouts ulysses --variants eager      (~8 min)
    2 GPUs --models hunyuan-video-544p --gpus 2 --phases pipeline vae                   (~9 min)
copying $OUT/perf.json into the tree between calls (untracked files travel), ~70 min of device time in all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from perf_report import PEERS, check, derive, environment, table, targets, write

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("wan-14b", "hunyuan-video-544p")
QUICK_MODELS = ("tiny-wan", "tiny-hunyuan-video")
# Text encoders of the released sizes (random weights; vocab from the word tokenizer: embeddings cost nothing).
TEXT = {"wan": dict(t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                            feed_forward_proj="gated-gelu")),
        "hunyuan_video": dict(llama=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8),
                              clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768))}
EXTRAS = {"hunyuan_video": {"prompt_template": {"template": "{}", "crop_start": 0}}}
WORDS = "a red circle moves left blue square up green triangle right yellow down".split()


# --- building ---------------------------------------------------------------------------------------------
def lookup(name: str):
    from lbdist.models import specs

    for spec in specs():
        if name in spec.real_sizes:
            return spec, spec.real_sizes[name]
    raise SystemExit(f"unknown size {name!r}; known: {[n for s in specs() for n in s.real_sizes]}")


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
    """The family's pipeline at a real size (or a `tiny-*` stand-in) as a `LoadedPipeline` for `Engine`."""
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan

    from lbdist.generation.loading import LoadedPipeline

    spec, size = lookup(name)
    torch_dtype, quick = getattr(torch, dtype), name.startswith("tiny-")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    torch.manual_seed(0)  # every rank builds the same weights
    try:
        with torch.device(device):
            transformer = spec.transformer_class(**size.config)
            pipe = spec.build_pipeline(dict(size.config), words=WORDS, seed=0, text_layers=1, transformer=transformer)
            if not quick:
                pipe.vae = {"wan": AutoencoderKLWan, "hunyuan_video": AutoencoderKLHunyuanVideo}[spec.family]()
                _real_text(pipe, spec.family)
    finally:
        torch.set_default_dtype(previous)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            same = next(component.parameters()).dtype == torch_dtype
            component.to(device=device, **({} if same else {"dtype": torch_dtype})).eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    defaults = dict(height=size.height, width=size.width, num_frames=size.frames, num_inference_steps=steps,
                    guidance_scale=size.guidance, max_sequence_length=size.text_tokens, **EXTRAS.get(spec.family, {}))
    return LoadedPipeline(pipe, spec.family, f"realsize:{name}", defaults)


def prompt(tokens: int) -> str:
    return " ".join((WORDS * (tokens // len(WORDS) + 1))[:max(tokens - 1, 1)])


# --- phase: layout -----------------------------------------------------------------------------------------
def phase_layout(names) -> dict:
    from lbdist.parallel.layout import ModelShape, choose_layout

    out = {}
    for name in names:
        spec, size = lookup(name)
        shape = ModelShape(spec.family, len(spec.branches), int(size.config["num_attention_heads"]))
        out[name] = {str(world): choose_layout(world, shape).label() for world in (1, 2, 4, 8)}
    return out


# --- phase: calls ------------------------------------------------------------------------------------------
def _call_inputs(loaded) -> dict:
    """The transformer's keyword arguments of the pipeline's first call (captured, then the call is stopped)."""
    captured = {}

    class Stop(Exception):
        pass

    def grab(module, args, kwargs):
        captured.update(kwargs)
        raise Stop

    pipe, d = loaded.pipe, dict(loaded.call_defaults)
    handle = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(prompt=prompt(d["max_sequence_length"]), output_type="latent", **{**d, "num_inference_steps": 2})
    except Stop:
        pass
    finally:
        handle.remove()
    return captured


def _median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times, sync = [], torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def phase_calls(name: str, args) -> dict:
    from lbdist.generation.compile import CompileConfig, CompileCounter, compile_blocks
    from lbdist.models import get_spec

    loaded = real_pipeline(name, args.device, args.dtype, args.steps)
    transformer, kwargs = loaded.pipe.transformer, _call_inputs(loaded)
    spec = get_spec(transformer)

    def full():
        with torch.no_grad():
            transformer(**kwargs)

    def final():
        saved = spec.only_final_block(transformer)
        try:
            full()
        finally:
            transformer._modules.update(saved)

    out = {"eager": {"full_ms": _median_ms(full, args.repeats, args.warmup),
                     "final_ms": _median_ms(final, args.repeats, args.warmup)}}
    if "compiled" in args.variants:
        compile_blocks(transformer, config=CompileConfig(backend=args.compile_backend, mode=args.compile_mode))
        full(), final()  # compile (full graph, then the final block alone: same graph)
        with CompileCounter() as counter:
            out["compiled"] = {"full_ms": _median_ms(full, args.repeats, args.warmup),
                               "final_ms": _median_ms(final, args.repeats, args.warmup)}
        out["compiled"]["compiles_after_warmup"] = counter.count
    for variant in out.values():
        variant["ceiling"] = {str(n): _ceiling(args.steps, n, variant["full_ms"], variant["final_ms"])
                              for n in args.intervals}
    return out


def _ceiling(steps: int, n: int, t_full: float, t_final: float) -> float:
    full_n = len(range(0, steps, n))
    return round(steps * t_full / (full_n * t_full + (steps - full_n) * t_final), 3)


# --- phase: pipeline ---------------------------------------------------------------------------------------
def adapter_sets(name: str, args, folder: Path) -> dict:
    """Random rank-`lora_rank` adapter sets for every N (and a 4-step warm-up set), saved under `folder`."""
    from lbdist import Schedule
    from lbdist.bridge import LoraSettings, random_adapter_set

    spec, size = lookup(name)
    with torch.device("meta"):  # shapes only: no weights on the driver
        transformer = spec.transformer_class(**size.config)
    lora = LoraSettings(args.lora_rank, 2.0 * args.lora_rank, spec.lora_targets)
    plans = {"warm": Schedule.periodic(4, 2), **{f"n{n}": Schedule.periodic(args.steps, n) for n in args.intervals
                                                   if f"N{n}" in args.runs}}
    out = {}
    for key, schedule in plans.items():
        random_adapter_set(transformer, schedule, lora=lora).save(folder / key)
        out[key] = str(folder / key)
    return out


def requests(name: str, args):
    from lbdist.generation import GenerationRequest

    text = prompt(lookup(name)[1].text_tokens)
    warm = GenerationRequest(text, num_inference_steps=4, schedule="2", adapters="warm")
    timed = [("full", GenerationRequest(text, num_inference_steps=args.steps))]
    timed += [(f"N{n}", GenerationRequest(text, num_inference_steps=args.steps, schedule=str(n), adapters=f"n{n}"))
              for n in args.intervals]
    return warm, [(label, request) for label, request in timed if label in args.runs]


def _rank_runs(worker, warm, timed) -> dict:
    """On every rank of a group: the warm-up request, then the timed ones under a compile counter."""
    from lbdist.generation.compile import CompileCounter

    worker.generate(warm)
    runs = {}
    with CompileCounter() as counter:
        for label, request in timed:
            result = worker.generate(request)
            if result is not None:
                runs[label] = {"timings": result.timings, "calls": result.calls}
    return {"runs": runs, "compiles_after_warmup": counter.count}


def compile_config(variant: str, args):
    from lbdist.generation.compile import CompileConfig

    return CompileConfig(backend=args.compile_backend, mode=args.compile_mode) if variant == "compiled" else None


def pipeline_one_gpu(name: str, variant: str, adapters: dict, args) -> dict:
    from lbdist.generation.engine import Engine

    engine = Engine(real_pipeline(name, args.device, args.dtype, args.steps), adapters=adapters,
                    compile=compile_config(variant, args))
    warm, timed = requests(name, args)
    try:
        return _rank_runs(SimpleNamespace(generate=engine.run), warm, timed)  # the Engine as a "worker"
    finally:
        del engine
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def pipeline_group(name: str, gpus: int, layout, variant: str, adapters: dict, args) -> dict:
    from lbdist.parallel import PipelineFactory, WorkerGroup, WorkerGroupConfig

    quick = args.quick
    config = WorkerGroupConfig(num_workers=gpus, cfg_degree=layout.cfg, ulysses_degree=layout.ulysses,
                               ring_degree=layout.ring, backend="gloo" if quick else "auto",
                               gpus_per_worker=0 if quick else None, call_timeout_s=args.call_timeout)
    factory = PipelineFactory(real_pipeline, {"name": name, "dtype": args.dtype, "steps": args.steps})
    warm, timed = requests(name, args)
    with WorkerGroup(config) as group:
        group.load(factory, {"adapters": adapters, "compile": compile_config(variant, args)})
        ranks = group.run(_rank_runs, warm, timed)
    return {**ranks[0], "compiles_after_warmup": max(r["compiles_after_warmup"] for r in ranks),
            "layout": layout.label()}


def layouts(name: str, gpus: int, which) -> list:
    """The rule's layout ("rule"), and for a two-branch model plain Ulysses (cfg 1, "ulysses") for comparison."""
    from lbdist.parallel.layout import Layout, ModelShape, choose_layout

    spec, size = lookup(name)
    shape = ModelShape(spec.family, len(spec.branches), int(size.config["num_attention_heads"]))
    rule = choose_layout(gpus, shape)
    chosen = [rule] if "rule" in which else []
    if "ulysses" in which and rule.cfg > 1 and shape.heads % gpus == 0:
        chosen.append(Layout(1, gpus, 1))
    return chosen


def phase_pipeline(name: str, gpus: int, args, folder: Path) -> dict:
    adapters = adapter_sets(name, args, folder)
    out = {}
    for variant in args.variants:
        if gpus == 1:
            out[f"1gpu/{variant}"] = pipeline_one_gpu(name, variant, adapters, args)
            continue
        for layout in layouts(name, gpus, args.layouts):
            out[f"{gpus}gpu/{layout.label()}/{variant}"] = pipeline_group(name, gpus, layout, variant, adapters, args)
    return out


# --- phase: vae --------------------------------------------------------------------------------------------
def build_vae(name: str, device, dtype):
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan

    spec, size = lookup(name)
    torch.manual_seed(0)
    if name.startswith("tiny-"):
        vae = spec.build_pipeline(dict(size.config), words=WORDS, seed=0, text_layers=1).vae
    else:
        vae = {"wan": AutoencoderKLWan, "hunyuan_video": AutoencoderKLHunyuanVideo}[spec.family]()
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def latents(name: str, vae, device, dtype):
    _, size = lookup(name)
    s, t = int(vae.config.get("scale_factor_spatial") or vae.config.get("spatial_compression_ratio")), \
        int(vae.config.get("scale_factor_temporal") or vae.config.get("temporal_compression_ratio"))
    channels = vae.config.get("z_dim") or vae.config.get("latent_channels")
    shape = (1, channels, (size.frames - 1) // t + 1, size.height // s, size.width // s)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _decode_timed(vae, z, args) -> tuple[float, torch.Tensor]:
    def run():
        with torch.no_grad():
            return vae.decode(z).sample

    ms = _median_ms(run, args.vae_repeats, 1)
    return ms, run().float()


def _error(out: torch.Tensor, reference: torch.Tensor) -> dict:
    mse = float((out - reference).pow(2).mean())  # pixels in [-1, 1]: peak-to-peak 2
    return {"max_abs": round(float((out - reference).abs().max()), 6),
            "psnr_db": None if mse == 0 else round(10 * float(torch.log10(torch.tensor(4.0 / mse))), 2)}


def phase_vae_one(name: str, args) -> dict:
    from lbdist.generation.compile import CompileCounter
    from lbdist.parallel.vae import VaeDecodeConfig, apply_vae_speedups

    variants = {"fp32": VaeDecodeConfig(), args.dtype: VaeDecodeConfig(dtype=args.dtype),
                f"{args.dtype}+tiling": VaeDecodeConfig(dtype=args.dtype, tiling=True),
                f"{args.dtype}+compile": VaeDecodeConfig(dtype=args.dtype, compile=True)}
    out, reference = {}, None
    for label, config in variants.items():
        vae = build_vae(name, args.device, torch.float32)
        apply_vae_speedups(vae, config=config)
        with CompileCounter() as counter:
            ms, sample = _decode_timed(vae, latents(name, vae, args.device, torch.float32), args)
        reference = sample if reference is None else reference
        out[label] = {"decode_ms": round(ms, 2), "compiles": counter.count, **_error(sample, reference)}
        del vae, sample
    return out


def _rank_vae(worker, name: str, dtype: str, repeats: int) -> dict:
    from lbdist.parallel.vae import apply_parallel_vae

    args = argparse.Namespace(vae_repeats=repeats)
    vae = build_vae(name, worker.device, getattr(torch, dtype))
    z = latents(name, vae, worker.device, getattr(torch, dtype))
    whole_ms, whole = _decode_timed(vae, z, args)
    split = apply_parallel_vae(vae)
    split_ms, parted = _decode_timed(vae, z, args)
    return {"one_gpu_ms": round(whole_ms, 2), "split_ms": round(split_ms, 2), "speedup": round(whole_ms / split_ms, 3),
            "split_calls": split.calls if split else 0, **_error(parted, whole)}


def phase_vae_group(name: str, gpus: int, args) -> dict:
    from lbdist.parallel import WorkerGroup, WorkerGroupConfig

    config = WorkerGroupConfig(num_workers=gpus, backend="gloo" if args.quick else "auto",
                               gpus_per_worker=0 if args.quick else None, call_timeout_s=args.call_timeout)
    with WorkerGroup(config) as group:
        return group.run(_rank_vae, name, args.dtype, args.vae_repeats)[0]


# --- main --------------------------------------------------------------------------------------------------
def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, 2 gloo ranks, fp32, aot_eager")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--gpus", nargs="+", type=int, default=None, help="GPU counts (ranks) to measure")
    ap.add_argument("--phases", nargs="+", default=["layout", "calls", "pipeline", "vae"],
                    choices=["layout", "calls", "pipeline", "vae"])
    ap.add_argument("--variants", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--runs", nargs="+", default=None, help="pipeline runs: full N6 N7 (default all)")
    ap.add_argument("--layouts", nargs="+", default=["rule", "ulysses"], choices=["rule", "ulysses"],
                    help="on >1 GPU: the layout rule's split, and Ulysses alone for two-branch models")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--intervals", nargs="+", type=int, default=None)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vae-repeats", type=int, default=3)
    ap.add_argument("--compile-backend", default=None)
    ap.add_argument("--compile-mode", default=None)
    ap.add_argument("--call-timeout", type=float, default=900.0)
    ap.add_argument("--out", default=None, help="JSON (read first if it exists, updated after every phase)")
    ap.add_argument("--table", default=None, metavar="JSON", help="print the tables of a results JSON and exit")
    args = ap.parse_args(argv)
    q = args.quick
    args.models = args.models or list(QUICK_MODELS if q else MODELS)
    args.gpus = args.gpus or [1, 2]
    args.steps = args.steps or (8 if q else 50)
    args.intervals = args.intervals or ([3, 4] if q else [6, 7])
    args.runs = args.runs or ["full", *(f"N{n}" for n in args.intervals)]
    args.compile_backend = args.compile_backend or ("aot_eager" if q else "inductor")
    args.device, args.dtype = ("cpu", "float32") if q else ("cuda", "bfloat16")
    if q:
        args.repeats, args.warmup, args.vae_repeats = 1, 1, 1
    default = ROOT / "tools" / "results" / ("bench_perf_quick.json" if q else "bench_perf.json")
    args.out = Path(args.out or (Path(os.environ["OUT"]) / "bench_perf.json" if os.environ.get("OUT") else default))
    return args


def run_phase(phase: str, name: str, args, folder: Path) -> dict:
    if phase == "calls":
        return phase_calls(name, args)
    if phase == "pipeline":
        out = {}
        for gpus in args.gpus:
            out.update(phase_pipeline(name, gpus, args, folder))
        return out
    out = {"1gpu": phase_vae_one(name, args)} if 1 in args.gpus else {}
    out.update({f"{g}gpu": phase_vae_group(name, g, args) for g in args.gpus if g > 1})
    return out


def merge(old: dict, new: dict, env: dict) -> None:
    """Fold one call's results into the report: pipeline runs accumulate per entry, each stamped with its card,
    commit and date (a report may gather several calls)."""
    stamp = {k: env[k] for k in ("card", "commit", "date")}
    for key, value in new.items():
        value = {**value, "at": stamp} if isinstance(value, dict) else value
        if isinstance(value, dict) and "runs" in value and key in old:
            runs = {**old[key]["runs"], **value["runs"]}
            compiles = max(old[key].get("compiles_after_warmup", 0), value["compiles_after_warmup"])
            value = {**value, "runs": runs, "compiles_after_warmup": compiles}
        old[key] = value


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if __name__ != "__main__":  # imported (tests): Ray workers cannot import tools/, so ship these functions
        import ray.cloudpickle
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    torch.set_num_threads(1) if args.quick else None
    report = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}}
    report["env"], report["targets"], report["peers"] = environment(args), targets(), PEERS
    if any(g > 1 for g in args.gpus) and {"pipeline", "vae"} & set(args.phases):
        import ray
        if not ray.is_initialized():
            ray.init(**({"num_cpus": 2, "num_gpus": 0} if args.quick else {}), include_dashboard=False,
                     log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        for phase in args.phases:
            if phase == "layout":
                report["layout"] = phase_layout(args.models)
                write(report, args.out)
                continue
            for name in args.models:
                model = report["models"].setdefault(name, {})
                merge(model.setdefault(phase, {}), run_phase(phase, name, args, Path(folder) / name), report["env"])
                model["derived"] = derive(model, args.steps, args.intervals)
                model["targets_met"] = check(name, model, report["targets"])
                write(report, args.out)
                print(f"[{phase}] {name} done -> {args.out}", flush=True)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
