"""Speed of LearniBridge against full compute and diffusers' caches, real-size random-weight models, one GPU.

    python tools/bench_speed.py --out tools/results/bench_speed_h100.json

Models (tools/realsize.py): Wan2.1-14B 480x832x81, HunyuanVideo 480x832x65, FLUX.1-dev 1024x1024, bf16,
50 steps, one guidance branch (as bench_bridge.py). For each model, in one run on one card:
- full compute: `t_full`, the median of >= 5 full forwards (a 50-step full loop is never run: 50 x t_full);
- LearniBridge at N = 5, 6 as real 50-step denoising loops with random rank-32 adapters resident, and at
  N = 7 as one whole-pipeline call (small random text encoders, the real-size VAE with random weights):
  its text-encoding, transformer and VAE-decode times give the fixed share of the pipeline and the
  end-to-end ratio `(50 t_full + fixed) / measured pipeline time`, capped by `(50 t_full + fixed) / fixed`;
- diffusers caches (`lbdist.evaluate.METHODS`, the module identifiers of the fidelity benchmark), real
  50-step loops at knobs comparable to those intervals: TaylorSeerCache full and lite (cache_interval N),
  MagCache with unit magnitude ratios, `max_skip_steps` N-1 and no retention (so it computes every N-th
  step, the bridge's full-step pattern; real MagCache picks its steps from calibrated ratios),
  FirstBlockCache at an infinite threshold (every step after the first runs only the first block: its
  cheapest pattern; its real speed depends on content, which random weights cannot show), and
  PyramidAttentionBroadcast / FasterCache (self-attention every N-th step) as real loops on FLUX and, on
  the video models where a real loop costs most of a full loop, from measured step costs (one computed and
  two skipped steps: loop = computed x t_full + skipped x t_skip);
- peak GPU memory per loop, attention / FFN / block evaluations per loop relative to full compute, and
  computed steps (steps slower than half a full step).
TaylorSeerCache (attention + FFN) is skipped where its Taylor factors would not fit in GPU memory (measured
from one step's module outputs). Each model has a time budget (`BUDGET_S`, about 9 minutes for the three on
an H100); a loop whose estimated cost would exceed what is left is skipped and reported as such. JSON is
written after each model; a table is printed last (about 8.5 minutes on one H100 for the three models, by
the budgets). `--quick`: tiny configs on the CPU (CI smoke test).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realsize  # noqa: E402
from bench_bridge import denoise, environment, final_block_only, median_ms, sync  # noqa: E402
from realsize import CONFIGS, QUICK, SHAPES, build, sigmas, step_inputs  # noqa: E402

from lbdist.bridge import LoraSettings, Schedule, disable_bridge, enable_bridge, random_adapter_set  # noqa: E402
from lbdist.evaluate import METHODS, CostMeter, MethodSetup, PeerSettings  # noqa: E402
from lbdist.evaluate.peers import TAYLORSEER_MODULES  # noqa: E402
from lbdist.generate import transformer_timer  # noqa: E402
from lbdist.models import get_spec  # noqa: E402

MODELS = ["wan-14b", "hunyuan-video", "flux-dev"]
# Time budget per model (seconds, model build included): the three fit one 9-minute device call on an H100.
BUDGET_S = {"wan-14b": 235, "hunyuan-video": 175, "flux-dev": 80, "wan-1.3b": 120}
# What to run per model, in priority order: (method, interval N, kind). kind "loop": a real 50-step loop;
# "pipeline": the whole-pipeline call with LearniBridge; "estimate": loop time from measured step costs.
_VIDEO = [("learnibridge", 5, "loop"), ("learnibridge", 6, "loop"), ("learnibridge", 7, "pipeline"),
          ("pab", 5, "estimate"), ("fastercache", 5, "estimate"), ("taylorseer_lite", 5, "loop"),
          ("magcache", 5, "loop"), ("fbcache", math.inf, "loop"), ("taylorseer", 5, "loop")]
PLANS = {
    "wan-14b": _VIDEO, "hunyuan-video": _VIDEO, "wan-1.3b": _VIDEO + [("pab", 5, "loop"), ("fastercache", 5, "loop")],
    "flux-dev": [*[("learnibridge", n, "loop") for n in (5, 6, 7)], ("learnibridge", 7, "pipeline"),
                 *[(m, 5, "loop") for m in ("taylorseer", "taylorseer_lite", "magcache")], ("fbcache", math.inf, "loop"),
                 *[(m, 5, k) for k in ("loop", "estimate") for m in ("pab", "fastercache")],
                 *[(m, n, "loop") for m in ("taylorseer", "taylorseer_lite", "magcache", "pab", "fastercache")
                   for n in (6, 7)]],
}
QUICK_PLAN = [("learnibridge", 3, "loop"), ("learnibridge", 4, "pipeline"), ("taylorseer", 3, "loop"),
              ("taylorseer_lite", 3, "loop"), ("magcache", 3, "loop"), ("fbcache", math.inf, "loop"),
              ("pab", 3, "loop"), ("fastercache", 3, "loop"), ("pab", 3, "estimate")]


def computed_steps(method: str, n: float, steps: int, kind: str, settings: PeerSettings) -> int:
    """Steps a run computes in full (for its cost estimate before running it)."""
    if kind == "estimate":
        return 3
    if method in ("learnibridge", "magcache"):
        return math.ceil(steps / n)
    if method.startswith("taylorseer"):
        w = settings.taylor_warmup_steps
        return sum(1 for s in range(steps) if s < w or (s - w - 1) % int(n) == 0)
    if method == "fbcache":
        return 1
    return steps  # attention-only caches still run every block's FFN: budget them as full steps


def method_setup(family: str, method: str, n: float, steps: int, rank: int, model, dtype) -> tuple[str, float, MethodSetup]:
    """(method name, knob, setup) of one loop: the knob and settings that give the interval-N pattern."""
    settings = PeerSettings(taylor_factors_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    spec = get_spec(model)
    adapters = lambda interval: random_adapter_set(  # noqa: E731
        model, Schedule.periodic(steps, interval), branches=("cond",), lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets))
    setup = MethodSetup(family, steps, ("cond",), adapters=adapters, mag_ratios=(1.0,) * steps, settings=settings)
    if method == "magcache":
        setup = replace(setup, settings=replace(settings, mag_max_skip_steps=int(n) - 1, mag_retention_ratio=0.0))
        return method, 1.0, setup
    if method == "fbcache":
        return method, 1e9, setup
    return method, n, setup


def taylor_factor_bytes(model, family: str, forward) -> int:
    """Bytes TaylorSeer (order 1) would hold: two factors per output of every module it caches."""
    import re

    total = [0]

    def count(module, args, output):
        outs = output if isinstance(output, tuple) else (output,)
        total[0] += sum(o.nbytes for o in outs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(count) for name, m in model.named_modules()
               if any(re.fullmatch(p, name) for p in TAYLORSEER_MODULES[family])]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return 2 * total[0]


def run_loop(model, shim, method: str, knob: float, setup: MethodSetup, latents, kwargs_at, steps: int,
             t_full_ms: float, per_step: dict, quick: bool) -> dict:
    """One real `steps`-step loop under `method`; wall time, peak memory, evaluations relative to full."""
    m = METHODS[method]
    record = m.apply(shim, knob, setup)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with CostMeter(model, flops=quick) as meter:
            _, seconds, step_ms = denoise(model, latents, kwargs_at, steps)
    finally:
        m.remove(shim)
    full = {k: v * steps for k, v in per_step.items()}
    return {"method": method, "knob": knob, "kind": "loop", "config": _jsonable(record), "loop_s": round(seconds, 3),
            "speedup": round(steps * t_full_ms / 1e3 / seconds, 3),
            "computed_steps": sum(1 for t in step_ms if t > 0.5 * t_full_ms) if step_ms else None,
            "evaluations": {k: round(meter.counts[k] / full[k], 4) for k in ("attention", "ffn", "blocks")},
            "flops_ratio": round(meter.counts["flops"] / full["flops"], 4) if quick else None,
            "peak_memory_gb": _peak()}


def estimate_from_steps(model, shim, method: str, n: int, setup: MethodSetup, latents, kwargs_at, steps: int,
                        t_full_ms: float) -> dict:
    """Loop time of an every-N-th-step attention cache from measured step costs (first 3 steps of the loop)."""
    m = METHODS[method]
    record = m.apply(shim, n, setup)
    sig, x, times = sigmas(steps), latents, []
    try:
        with torch.no_grad():
            for i in range(3):
                sync()
                t = time.perf_counter()
                with model.cache_context("cond", step_index=i, num_inference_steps=steps):
                    v = model(**kwargs_at(x, sig[i]))[0]
                x = x + (sig[i + 1] - sig[i]) * v
                sync()
                times.append((time.perf_counter() - t) * 1e3)
    finally:
        m.remove(shim)
    t_skip = statistics.median(times[1:])
    computed = math.ceil(steps / n)
    seconds = (computed * t_full_ms + (steps - computed) * t_skip) / 1e3
    return {"method": method, "knob": n, "kind": "estimate from step costs", "config": _jsonable(record),
            "step_ms": [round(t, 2) for t in times], "t_skip_ms": round(t_skip, 2), "computed_steps": computed,
            "loop_s": round(seconds, 3), "speedup": round(steps * t_full_ms / 1e3 / seconds, 3)}


def _peak():
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _jsonable(record: dict) -> dict:
    return json.loads(json.dumps(record, default=str))


@contextlib.contextmanager
def _timed(obj, attr: str, sink: list):
    """Time every call of `obj.attr` (synchronising CUDA) into `sink`, by shadowing it on the instance."""
    original = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        sink.append(time.perf_counter() - t)
        return out

    setattr(obj, attr, wrapper)
    try:
        yield
    finally:
        delattr(obj, attr) if attr in vars(obj) else None


def real_vae(family: str, quick: bool, device, dtype):
    """The family's VAE at its released size (random weights), or a small one with the same latent width."""
    from diffusers import AutoencoderKL, AutoencoderKLHunyuanVideo, AutoencoderKLWan

    if family == "wan":
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if quick else AutoencoderKLWan()
    elif family == "hunyuan_video":
        latent = CONFIGS["tiny-hunyuan-video"][1]["in_channels"] if quick else 16
        vae = AutoencoderKLHunyuanVideo(latent_channels=latent, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                        norm_num_groups=4) if quick else AutoencoderKLHunyuanVideo()
        vae.enable_tiling()  # as HunyuanVideo's own examples do; an untiled 65-frame decode needs tens of GB
    else:
        width = (8, 8, 8, 8) if quick else (128, 256, 512, 512)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=width,
                            layers_per_block=1 if quick else 2, latent_channels=4 if quick else 16,
                            norm_num_groups=4 if quick else 32, use_quant_conv=False, use_post_quant_conv=False,
                            scaling_factor=0.3611, shift_factor=0.1159)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def pipeline_around(name: str, model, device, dtype, quick: bool):
    """A real diffusers pipeline around the already built transformer: realsize.bench_pipeline's text encoders
    (video families; its `build` is pointed at `model` so no second transformer is made), FLUX's built here
    the same way, and the family's VAE from `real_vae`."""
    family = CONFIGS[name][0]
    if family == "flux":
        pipe = _flux_pipeline(name, model, device, dtype)
    else:
        original = realsize.build
        realsize.build = lambda *args, **kwargs: model
        try:
            pipe = realsize.bench_pipeline(name, device=device, dtype=dtype)
        finally:
            realsize.build = original
    pipe.register_modules(vae=real_vae(family, quick, device, dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_pipeline(name: str, model, device, dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lbdist.toy.tokenizer import word_tokenizer

    config = CONFIGS[name][1]
    words = "a red circle moves left blue square up green triangle right yellow down".split()
    clip_tok, t5_tok = word_tokenizer(words, model_max_length=77), word_tokenizer(words, model_max_length=512)
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=config["pooled_projection_dim"],
                                        intermediate_size=256, num_attention_heads=8, num_hidden_layers=1,
                                        projection_dim=config["pooled_projection_dim"], eos_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=config["joint_attention_dim"], d_kv=64, d_ff=256,
                                 num_layers=1, num_heads=8, relative_attention_num_buckets=8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=model)
    for module in (clip, t5):
        module.to(device=device, dtype=dtype).eval()
    return pipe


def pipeline_call(name: str, model, n: int, steps: int, rank: int, t_full_ms: float, device, dtype, quick: bool) -> dict:
    """One whole-pipeline call with LearniBridge at interval n: text encoding, loop, VAE decode, fixed share."""
    family = CONFIGS[name][0]
    shape = SHAPES[name]
    pipe = pipeline_around(name, model, device, dtype, quick)
    if family == "flux":
        pipe.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        kwargs = dict(height=shape.height, width=shape.width, guidance_scale=3.5, max_sequence_length=shape.text_tokens)
    else:
        kwargs = realsize.call_kwargs(name, shape)
        kwargs["guidance_scale"] = 1.0 if family == "wan" else kwargs["guidance_scale"]  # one branch, as the loops
    spec = get_spec(model)
    adapters = random_adapter_set(model, Schedule.periodic(steps, n), branches=("cond",),
                                  lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets))
    runtime = enable_bridge(pipe, Schedule.periodic(steps, n), adapters=adapters)
    encode, decode = [], []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with _timed(pipe, "encode_prompt", encode), _timed(pipe.vae, "decode", decode), \
                transformer_timer(model) as tt, torch.no_grad():
            sync()
            t = time.perf_counter()
            pipe(prompt="a red circle moves left", num_inference_steps=steps, output_type="np",
                 generator=torch.Generator("cpu").manual_seed(0), **kwargs)
            sync()
            total = time.perf_counter() - t
        stats = dict(runtime.stats)
    finally:
        disable_bridge(pipe)
    fixed = total - tt[0]
    full_e2e = steps * t_full_ms / 1e3 + fixed
    result = {"method": "pipeline", "knob": n, "kind": "whole pipeline (LearniBridge)", "total_s": round(total, 3),
              "transformer_s": round(tt[0], 3), "text_encoding_s": round(sum(encode), 3), "vae_decode_s": round(sum(decode), 3),
              "fixed_s": round(fixed, 3), "fixed_share_of_bridged_pipeline": round(fixed / total, 4),
              "full_pipeline_s_from_median": round(full_e2e, 3), "end_to_end_speedup": round(full_e2e / total, 3),
              "loop_speedup": round(steps * t_full_ms / 1e3 / tt[0], 3), "end_to_end_cap": round(full_e2e / fixed, 2),
              "bridge_stats": stats, "vae": f"{type(pipe.vae).__name__} ({'small' if quick else 'released size'}, random)",
              "vae_tiling": bool(getattr(pipe.vae, "use_tiling", False)), "peak_memory_gb": _peak()}
    del pipe, adapters
    gc.collect()
    return result


def bench_model(name: str, steps: int, repeats: int, device: str, rank: int, dtype, quick: bool, budget: float) -> dict:
    started = time.perf_counter()
    family, shape = CONFIGS[name][0], SHAPES[name]
    model = build(name, device=device, dtype=dtype)
    latents, make_kwargs = step_inputs(name, shape, device=device, dtype=dtype)
    shim = SimpleNamespace(transformer=model, current_timestep=1000.0)

    def kwargs_at(x, sigma):  # PAB / FasterCache read the current timestep through the shim, as from a pipeline
        shim.current_timestep = float(sigma) * 1000.0
        return make_kwargs(x, sigma)

    with torch.no_grad():
        one = lambda: model(**make_kwargs(latents, 0.5))  # noqa: E731
        with CostMeter(model, flops=quick) as meter:  # one counted full step, also the first warm-up forward
            factor_bytes = taylor_factor_bytes(model, family, one)
        per_step = dict(meter.counts)
        t_full, full_all = median_ms(one, repeats, warmup=1)
        with final_block_only(model):
            t_final, _ = median_ms(one, repeats, warmup=1)
    free = None
    if torch.cuda.is_available():  # free on the card plus what the caching allocator holds unused
        free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    result = {"model": name, "family": family, "shape": shape.label(), "steps": steps, "t_full_ms": round(t_full, 2),
              "t_full_all_ms": [round(t, 2) for t in full_all], "t_final_ms": round(t_final, 3),
              "full_loop_s_from_median": round(steps * t_full / 1e3, 3), "taylorseer_factor_gb": round(factor_bytes / 2**30, 2),
              "free_memory_gb_before_loops": round(free / 2**30, 2) if free else None, "budget_s": budget, "runs": []}
    for method, n, kind in (QUICK_PLAN if quick else PLANS[name]):
        est = (computed_steps(method, n, steps, kind, PeerSettings()) * t_full + steps * t_final) / 1e3
        left = budget - (time.perf_counter() - started)
        base = {"method": method, "knob": n, "kind": "skipped"}
        if est > left:
            result["runs"].append({**base, "reason": f"estimated {est:.0f} s, {left:.0f} s of this model's budget left"})
            continue
        if method == "taylorseer" and free is not None and factor_bytes > 0.9 * free:
            result["runs"].append({**base, "reason": f"Taylor factors need {factor_bytes / 2**30:.1f} GB, "
                                                     f"{free / 2**30:.1f} GB free"})
            continue
        try:
            if kind == "pipeline":
                run = pipeline_call(name, model, int(n), steps, rank, t_full, device, dtype, quick)
            else:
                method_name, knob, setup = method_setup(family, method, n, steps, rank, model, dtype)
                if kind == "estimate":
                    run = estimate_from_steps(model, shim, method_name, int(n), setup, latents, kwargs_at, steps, t_full)
                else:
                    run = run_loop(model, shim, method_name, knob, setup, latents, kwargs_at, steps, t_full, per_step,
                                   quick)
                    run.update(knob=n, method_knob=knob)
        except Exception as e:  # one failing run (e.g. out of memory) must not lose the others
            if quick:
                raise
            run = {"method": method, "knob": n, "kind": "failed", "reason": f"{type(e).__name__}: {e}"[:500]}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result["runs"].append(run)
        print(f"  {name} {method} {n} {kind}: {run.get('speedup', run.get('end_to_end_speedup'))}x "
              f"({time.perf_counter() - started:.0f} s into the model)", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    del model, latents, make_kwargs, shim
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def print_table(report: dict) -> None:
    print(f"\n{report['card']} | commit {report['commit'][:10]} | {report['steps']} steps, one guidance branch")
    print(f"{'model':14} {'method':16} {'N':>4} {'kind':26} {'loop s':>8} {'speedup':>8} {'peak GB':>8}  evaluations a/f/b")
    for m in report["models"]:
        print(f"{m['model']:14} {'full compute':16} {'':>4} {'50 x median step':26} {m['full_loop_s_from_median']:>8.2f} "
              f"{1.0:>8.3f} {'':>8}")
        for r in m["runs"]:
            if r["kind"] in ("skipped", "failed"):
                print(f"{m['model']:14} {r['method']:16} {r['knob']:>4g} {r['kind']}: {r['reason']}")
                continue
            loop = r.get("loop_s", r.get("transformer_s"))
            speed = r.get("speedup", r.get("loop_speedup"))
            ev = r.get("evaluations")
            ev = "/".join(f"{ev[k]:.2f}" for k in ("attention", "ffn", "blocks")) if ev else ""
            print(f"{m['model']:14} {r['method']:16} {r['knob']:>4g} {r['kind'][:26]:26} {loop:>8.2f} {speed:>8.3f} "
                  f"{r.get('peak_memory_gb') or 0:>8.2f}  {ev}")
            if r["method"] == "pipeline":
                print(f"{'':14} {'':16} {'':>4} text {r['text_encoding_s']:.2f} s, VAE decode {r['vae_decode_s']:.2f} s, "
                      f"fixed {r['fixed_s']:.2f} s ({100 * r['fixed_share_of_bridged_pipeline']:.1f}% of the bridged "
                      f"pipeline); end-to-end {r['end_to_end_speedup']:.2f}x (cap {r['end_to_end_cap']:.1f}x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="measured forwards for each median (>= 5 for reports)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="scale every model's time budget (BUDGET_S)")
    ap.add_argument("--out", default="tools/results/bench_speed.json")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny configs, 8 steps, fp32")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16
    if args.quick:
        args.models, args.device, args.steps, args.repeats, args.rank, dtype = QUICK, "cpu", 8, 2, 4, torch.float32
        torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but no CUDA device is visible; this benchmark is for the GPU")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    report = {"benchmark": "bench_speed", **environment(), "steps": args.steps, "rank": args.rank,
              "dtype": str(dtype).replace("torch.", ""), "models": []}
    for name in args.models:
        budget = 1e9 if args.quick else BUDGET_S.get(name, 120) * args.budget_scale
        report["models"].append(bench_model(name, args.steps, args.repeats, args.device, args.rank, dtype, args.quick, budget))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))  # after each model: partial results survive
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
