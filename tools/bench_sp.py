"""Sequence parallelism (xfuser Ulysses, in lbdist Ray worker groups) times the bridge, on real-size transformers.

    # on a 4-GPU machine (about 5 minutes); NCCL_NVLS_ENABLE=0 etc. are forwarded to every Ray worker
    python tools/bench_sp.py --degrees 1 2 4 --out $OUT/bench_sp.json
    python tools/bench_sp.py --quick          # CPU smoke test: tiny configs, 2 gloo ranks, fp32

Models: Wan2.1-14B config at 480x832x81 (32,760 tokens, CFG: two transformer calls per step) and the
HunyuanVideo config at 480x832x65 (26,520 tokens, guidance-distilled: one call), random bf16 weights built on
each GPU (`tools/realsize.py`). For each degree d a `WorkerGroup` of d Ray actors (one per GPU, NCCL) is
started, and every rank, through `group.run`, builds the model, times full steps (median of >= 5 after 2
warm-ups; CUDA-synchronised wall time inside the rank, so Ray adds nothing), then bridged steps (through the
lbdist hooks with a real `cache_context` per step and a random rank-32 adapter resident for every bridge), and,
at the loop degree (the largest), a real 50-step Euler loop with the bridge for each `--intervals` N (default
6). At degree 1 the plain diffusers model is the baseline ("one GPU, full compute"); the xfuser wrapper at
degree 1 is timed too, to separate what the wrapper itself changes (HunyuanVideo: it drops the text padding
mask) from what the split buys.

Derived: SP speedup = t_full(1 GPU) / t_full(d); bridge speedup at 1 GPU = T*t_full / (F*t_full + (T-F)*t_bridged)
for F full steps of T (per interval N); the loop's speedup = T*calls*t_full(1 GPU) / measured loop seconds at the
loop degree, and its ratio to (bridge speedup x SP speedup), per N.
Issue-5 targets (480p models): SP-4 >= 3.5x on full steps; bridge x SP-4 >= 0.9 x (bridge speedup x SP speedup).
Writes JSON (card, commit from LBDIST_COMMIT or git, date, every number) after each stage; prints a table last.
Beside it, <stem>.samples.pt keeps every k-th element of the 1-GPU output (k = ceil(n / 2**17)) so that
a later call (`--merge`) still reports each degree's relative L2 against one GPU.

Issue 6 (8 GPUs): `hunyuan-video-720p` (HunyuanVideo config, 720x1280x129: 33*45*80 = 118,800 tokens, 24 heads)
and `wan-14b-720p` (Wan2.1-14B config, 720x1280x81: 21*45*80 = 75,600 tokens, 40 heads, CFG), full and bridged
steps at SP 1, 2, 4, 8 (median of 3: `--repeats 3` is allowed for these models alone), whole 50-step loops with
the bridge at N=6 and N=7 at SP 8 only (refused below SP 8). Targets, reported met/missed in the JSON and the
table: SP-8 >= 6.5x over one GPU (diffusers, full compute) on full steps; bridge x SP-8 (the measured loop
against 50 x calls x t_full(1 GPU)) >= 35x, per N. Anchor printed beside them: xDiT's HunyuanVideo at that
size, 1904 s on one H100 and 337.6 s on eight with Ulysses (5.64x).

Estimated cost (one full HunyuanVideo-720p step ~40 s on one H100, about t/d at SP d, 6.2 s at SP 8; Wan-14B-720p
~13 s a call from the 480p 3.37 s scaled by FLOPs, 2 calls a step; each mode runs 6 full steps with
`--warmup 1 --repeats 3`: warm-up, 3 timed, the rel-L2 sample, the bridged series' full step 0; a Ray group
start ~20 s; the wheel install ~35 s): HunyuanVideo SP 1 ~240 s of steps; SP 2/4/8 ~225 s; its two loops
~110 s (9 and 8 full steps at SP 8); Wan all degrees ~155 s, its two loops ~75 s. About 1,100 s in all, more
than one 600 s device call, so three calls (~310 s, ~445 s, ~360 s), then one merge on the CPU. Degrees run
in the order given: the largest first after SP 1, so a call cut at its limit loses SP 2, not SP 8 and the loops.

Wheels: the full `.whl/bundle.tar.xz` (47 MB, ray[serve] and deepspeed) plus the tracked tree (26 MB, toy
weights) exceed the 64 MiB a call carries. Carry `.whl-sp/bundle.tar.xz` instead (28 MB: ray core, diffusers,
xfuser, yunchang and what they need beyond the machine's image; `.whl-sp/CONTENTS.txt`); to rebuild it:
`python3 ../shared/device/wheels.py --pack ray diffusers xfuser yunchang -d .whl-sp` (and `echo /.whl-sp/ >>
.git/info/exclude`).

    # every call: kind nvidia-h100-x8, carry [".whl-sp"], timeout_s 600; NVLink multicast off in every process
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TORCH_CUDA_ARCH_LIST=9.0
    export PYTHONUNBUFFERED=1 LBDIST_COMMIT=<git rev-parse HEAD here>
    [ -d /tmp/site/ray ] || { mkdir -p /tmp/w && tar -xJf .whl-sp/bundle.tar.xz -C /tmp/w && python3 -m pip \
        install -q --no-index --no-deps --no-build-isolation --target /tmp/site /tmp/w/*; }
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
    A="--intervals 6 7 --loop-degree 8 --repeats 3 --warmup 1 --no-sp1-wrapper"

    # call 1 (~5 min): HunyuanVideo at SP 1
    python3 tools/bench_sp.py --models hunyuan-video-720p --degrees 1 $A --out $OUT/sp720_hunyuan_sp1.json
    # here: copy call 1's sp720_hunyuan_sp1.json and sp720_hunyuan_sp1.samples.pt into tools/results/ (untracked
    # files travel with the tree), then call 2 (~7.5 min): HunyuanVideo at SP 8 (and its two loops), 4, 2
    python3 tools/bench_sp.py --models hunyuan-video-720p --degrees 8 4 2 $A \
        --merge tools/results/sp720_hunyuan_sp1.json --out $OUT/sp720_hunyuan.json
    # call 3 (~6 min): Wan2.1-14B at SP 1, 8 (and its two loops), 4, 2
    python3 tools/bench_sp.py --models wan-14b-720p --degrees 1 8 4 2 $A --out $OUT/sp720_wan.json
    # here, on the CPU (the two JSONs where calls 2 and 3 returned them): one results JSON with both models, the
    # derived numbers, the issue-6 targets met/missed and xDiT's anchor; then the README's scaling table from it
    python tools/bench_sp.py --merge-only --merge sp720_hunyuan.json sp720_wan.json \
        --out tools/results/bench_sp_720p_h100x8.json

If call 1 shows a one-GPU step well above 40 s (over ~50 s), run call 2 as `--degrees 8 4` and then SP 2 in a call
of its own (`--degrees 2 --merge` call 2's JSON and samples, copied into tools/results/ as before).
Device time: ~18.5 min of commands plus a machine start per call when the machine went back in between (30 s
idle), ~23 min in all. Every call names the same kind (nvidia-h100-x8); --merge refuses reports of another card. A call stopped at its limit keeps the JSON written
after each finished degree. The xfuser wrapper at SP 1 is skipped (`--no-sp1-wrapper`): no call has room for it.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(1, str(ROOT))
from realsize import CONFIGS, SHAPES, build, check_split, latent_tokens, sigmas, step_inputs  # noqa: E402

from lbdist.bridge import LoraSettings, Schedule, disable_bridge, enable_bridge, random_adapter_set  # noqa: E402
from lbdist.bridge import reset_bridge  # noqa: E402
from lbdist.models import get_spec  # noqa: E402

BRANCHES = {"wan": ("cond", "uncond"), "hunyuan_video": ("cond",), "flux": ("cond",)}
GUIDANCE = 5.0

# Issue 6: the 720p configs, their targets and xDiT's published anchor (HunyuanVideo only).
ISSUE6 = ("hunyuan-video-720p", "wan-14b-720p")
ISSUE6_SP = 8              # SP degree of the targets and the only degree a whole loop may run at
ISSUE6_SP_TARGET = 6.5     # SP-8 full step >= 6.5x one GPU
ISSUE6_LOOP_TARGET = 35.0  # bridge x SP-8 loop >= 35x one GPU with full compute
XDIT_ANCHOR = {"model": "hunyuan-video-720p", "one_gpu_s": 1904.0, "eight_gpu_s": 337.6, "speedup": 5.64,
               "what": "xDiT (xfuser), HunyuanVideo 720x1280x129, 50 steps, Ulysses, H100"}
REF_ELEMENTS = 1 << 17     # 1-GPU output kept for other calls' rel L2: every k-th element, at most this many


def issue_of(name: str) -> int:
    """Which issue's targets a model is judged by: 6 for the 720p configs, 5 for the others (tiny ones too)."""
    return 6 if name in ISSUE6 else 5


# --- inside each rank ------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(worker, name: str, mode: str, dtype):
    family, config = CONFIGS[name]
    torch.manual_seed(0)
    if mode == "diffusers":
        return build(name, device=worker.device, dtype=dtype)
    from lbdist.parallel import xdit

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(worker.device):
            model = xdit.build_wrapped(family, dict(config))
    finally:
        torch.set_default_dtype(previous)
    xdit.init_runtime(model, ulysses=worker.ulysses, ring=worker.ring)
    return model.eval().requires_grad_(False)


def _timed(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _bridged_times(model, make_kwargs, latents, repeats: int, rank: int, device) -> list[float]:
    """Step 0 full, then `repeats` bridged steps with their adapters, each through a real cache_context."""
    spec = get_spec(model)
    schedule = Schedule.explicit(repeats + 2, [0])
    adapters = random_adapter_set(model, schedule, branches=("cond",), lora=LoraSettings(rank, 2.0 * rank,
                                                                                       spec.lora_targets))
    enable_bridge(model, schedule, adapters=adapters)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        with model.cache_context("cond", step_index=i, num_inference_steps=repeats + 2):
            model(**make_kwargs(latents, 0.5))
        _sync(device)
        if i >= 2:  # step 1 is the bridged warm-up
            times.append(time.perf_counter() - start)
    reset_bridge(model)
    disable_bridge(model)
    return times


def _loop(model, name, make_kwargs, latents, steps: int, interval: int, rank: int, device) -> dict:
    """A real T-step Euler flow-matching loop with the bridge (CFG for Wan: cond and uncond calls per step)."""
    family = CONFIGS[name][0]
    branches = BRANCHES[family]
    spec = get_spec(model)
    schedule = Schedule.periodic(steps, interval)
    adapters = random_adapter_set(model, schedule, branches=branches,
                                  lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets))
    runtime = enable_bridge(model, schedule, adapters=adapters)
    negative = None
    if len(branches) > 1:
        text = make_kwargs(latents, 0.5)["encoder_hidden_states"]
        g = torch.Generator().manual_seed(1)
        negative = torch.randn(text.shape, generator=g).to(text.device, text.dtype)
    sig = sigmas(steps)
    x = latents
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        kwargs = make_kwargs(x, sig[i])
        with model.cache_context("cond", step_index=i, num_inference_steps=steps):
            v = model(**kwargs)[0]
        if negative is not None:
            with model.cache_context("uncond", step_index=i, num_inference_steps=steps):
                v_u = model(**{**kwargs, "encoder_hidden_states": negative})[0]
            v = v_u + GUIDANCE * (v - v_u)
        x = x + (sig[i + 1] - sig[i]) * v
    _sync(device)
    seconds = time.perf_counter() - start
    stats = dict(runtime.stats)
    reset_bridge(model)
    disable_bridge(model)
    return {"seconds": seconds, "steps": steps, "interval": interval, "full_steps": len(schedule.full_steps),
            "calls_per_step": len(branches), "stats": stats, "finite": bool(torch.isfinite(x).all())}


def measure(worker, name: str, mode: str, opts: dict) -> dict:
    """Everything one rank measures for one model (called on every rank at once through `group.run`)."""
    device = worker.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = _build(worker, name, mode, dtype)
    latents, make_kwargs = step_inputs(name, SHAPES[name], device=device, dtype=dtype)
    out = {"rank": worker.rank, "mode": mode, "degree": worker.sp_degree}
    with torch.no_grad():
        out["full_s"] = _timed(lambda: model(**make_kwargs(latents, 0.5)), device, opts["repeats"], opts["warmup"])
        sample = model(**make_kwargs(latents, 0.5))[0]  # collective: every rank calls it
        if worker.rank == 0:
            out["sample"] = sample.cpu()  # the model's dtype (bf16 on GPUs): exact, and half the bytes of fp32
        out["bridged_s"] = _bridged_times(model, make_kwargs, latents, opts["repeats"], opts["lora_rank"], device)
        if opts.get("loop"):
            out["loops"] = {str(n): _loop(model, name, make_kwargs, latents, opts["steps"], n, opts["lora_rank"],
                                          device) for n in opts["intervals"]}
            out["loop"] = out["loops"][str(opts["intervals"][0])]  # issue 5's key: the first interval
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def comm_probe(worker, megabytes: int, repeats: int = 5) -> dict:
    """All-to-all bandwidth of this group (the collective Ulysses runs four times per attention layer)."""
    import torch.distributed as dist

    n = dist.get_world_size()
    numel = megabytes * 2**20 // 2 // n * n
    x = torch.randn(numel, device=worker.device).to(torch.bfloat16 if worker.device.type == "cuda" else torch.float32)
    y = torch.empty_like(x)
    times = _timed(lambda: dist.all_to_all_single(y, x), worker.device, repeats, 2)
    seconds = statistics.median(times)
    return {"megabytes": megabytes, "seconds": seconds, "algbw_gb_s": x.numel() * x.element_size() / seconds / 1e9}


# --- driver ----------------------------------------------------------------------------------------------------
def environment(quick: bool) -> dict:
    import diffusers
    import ray

    commit = os.environ.get("LBDIST_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    try:
        from importlib.metadata import version
        xfuser_version = version("xfuser")
    except Exception:
        xfuser_version = "unknown"
    return {"benchmark": "bench_sp", "quick": quick, "commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host_cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "ray": ray.__version__, "xfuser": xfuser_version}


def summarise(per_rank: list[dict]) -> dict:
    r0 = per_rank[0]
    row = {"full_s_median": statistics.median(r0["full_s"]), "full_s_all": r0["full_s"],
           "full_s_median_max_over_ranks": max(statistics.median(r["full_s"]) for r in per_rank),
           "bridged_s_median": statistics.median(r0["bridged_s"]), "bridged_s_all": r0["bridged_s"]}
    if "peak_gb" in r0:
        row["peak_gb_max_over_ranks"] = max(r["peak_gb"] for r in per_rank)
    if "loop" in r0:
        row["loop"] = r0["loop"]
        row["loops"] = r0["loops"]
    return row


def derive(result: dict, name: str, loop_degree: int, steps: int, intervals: list[int]) -> None:
    """Speedups from the measured medians, per loop interval, and the targets of the model's issue (5 or 6)."""
    issue = issue_of(name)
    runs, base = result["runs"], result["runs"].get("1/diffusers")
    if base is None:
        return
    t1, b1 = base["full_s_median"], base["bridged_s_median"]

    def bridge_speedup(interval: int) -> float:
        full_n = len(Schedule.periodic(steps, interval).full_steps)
        return steps * t1 / (full_n * t1 + (steps - full_n) * b1)

    derived = {"bridge_speedup_1gpu_computed": bridge_speedup(intervals[0]), "sp_speedup": {}, "rel_l2_vs_1gpu": {},
               "loop_degree": loop_degree}
    for key, run in runs.items():
        derived["sp_speedup"][key] = t1 / run["full_s_median"]
        if "rel_l2_vs_1gpu" in run:
            derived["rel_l2_vs_1gpu"][key] = run["rel_l2_vs_1gpu"]
    top = f"{loop_degree}/xfuser"
    sp = derived["sp_speedup"].get(top)
    loops = {}
    if top in runs and "loop" in runs[top]:
        loops = runs[top].get("loops") or {str(runs[top]["loop"]["interval"]): runs[top]["loop"]}
    per = {}
    for key, loop in loops.items():
        bridge = bridge_speedup(loop["interval"])
        one_gpu = steps * loop["calls_per_step"] * t1
        measured = one_gpu / loop["seconds"]
        per[key] = {"interval": loop["interval"], "full_steps": loop["full_steps"],
                    "bridge_speedup_1gpu_computed": bridge, "one_gpu_full_loop_s_computed": one_gpu,
                    "loop_s_measured": loop["seconds"], "loop_speedup_vs_1gpu_full": measured,
                    "expected_product": bridge * sp, "of_product": measured / (bridge * sp)}
    if per:
        derived["per_interval"] = per
        first = per.get(str(intervals[0])) or next(iter(per.values()))
        derived.update({k: first[k] for k in ("one_gpu_full_loop_s_computed", "loop_s_measured",
                                              "loop_speedup_vs_1gpu_full", "expected_product", "of_product")})
    if issue == 5 and per:
        measured, product = derived["loop_speedup_vs_1gpu_full"], derived["expected_product"]
        derived["targets"] = {"sp_full_step_speedup>=3.5": sp >= 3.5,
                              "bridge_x_sp>=0.9*product": measured >= 0.9 * product,
                              "loop_speedup>=15": measured >= 15.0}
    if issue == 6:
        targets = {}
        sp8 = derived["sp_speedup"].get(f"{ISSUE6_SP}/xfuser")
        if sp8 is not None:
            targets[f"sp{ISSUE6_SP}_full_step_speedup>={ISSUE6_SP_TARGET}"] = {
                "value": sp8, "threshold": ISSUE6_SP_TARGET, "met": sp8 >= ISSUE6_SP_TARGET}
        if loop_degree == ISSUE6_SP:
            for key, row in per.items():
                value = row["loop_speedup_vs_1gpu_full"]
                targets[f"bridge_x_sp{ISSUE6_SP}>={ISSUE6_LOOP_TARGET:g} (N={key})"] = {
                    "value": value, "threshold": ISSUE6_LOOP_TARGET, "met": value >= ISSUE6_LOOP_TARGET}
        derived["targets"] = targets
        calls = len(BRANCHES[result["family"]])
        anchor = {"ours_50_full_steps_1gpu_s_computed": steps * calls * t1, "calls_per_step": calls}
        if sp8 is not None:
            anchor.update({"ours_50_full_steps_sp8_s_computed": steps * calls * t1 / sp8, "ours_sp8_speedup": sp8})
        if name == XDIT_ANCHOR["model"]:
            anchor["xdit"] = XDIT_ANCHOR
        else:
            anchor["xdit"] = None
            anchor["note"] = f"xDiT's anchor ({XDIT_ANCHOR['speedup']}x) is for HunyuanVideo; none for this model"
        derived["anchor"] = anchor
    result["derived"] = derived


def run_degree(group, degree: int, names, opts, report, args) -> None:
    for name in names:
        modes = (["diffusers"] + (["xfuser"] if args.sp1_wrapper else [])) if degree == 1 else ["xfuser"]
        for mode in modes:
            loop = degree == args.loop_degree and mode == "xfuser"
            t = time.perf_counter()
            per_rank = group.run(measure, name, mode, {**opts, "loop": loop})
            row = summarise(per_rank)
            sample = per_rank[0]["sample"]
            result = report["models"][name]
            base, ref = result.get("_sample"), result.get("_ref")
            if base is None and ref is None and mode == "diffusers":
                result["_sample"] = sample
            elif base is not None:
                row["rel_l2_vs_1gpu"] = rel_l2(sample, base)
            elif ref is not None:  # the 1-GPU output came from another call (--merge): compare a strided subset
                flat = sample.flatten()
                if flat.numel() == ref["numel"]:
                    row["rel_l2_vs_1gpu"] = rel_l2(flat[::ref["stride"]], ref["values"])
                    row["rel_l2_vs_1gpu_stride"] = ref["stride"]
            result["runs"][f"{degree}/{mode}"] = row
            print(f"[bench_sp] {name} degree {degree} {mode}: full {row['full_s_median']:.4f} s, bridged "
                  f"{row['bridged_s_median']:.4f} s ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def reference(sample: torch.Tensor) -> dict:
    """What another call needs of the 1-GPU output to give its own runs a rel L2: every k-th element."""
    flat = sample.flatten()
    stride = max(1, -(-flat.numel() // REF_ELEMENTS))
    return {"stride": stride, "numel": flat.numel(), "values": flat[::stride].clone()}


def samples_path(path: Path) -> Path:
    return path.with_name(path.stem + ".samples.pt")


def write(report: dict, path: Path) -> None:
    clean = {**report, "models": {n: {k: v for k, v in m.items() if not k.startswith("_")}
                                  for n, m in report["models"].items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean, indent=2))
    os.replace(tmp, path)
    refs = {n: reference(m["_sample"]) if "_sample" in m else m["_ref"] for n, m in report["models"].items()
            if "_sample" in m or "_ref" in m}
    if refs:  # small (<= 2**17 elements a model): travels with the JSON, for --merge in a later call
        torch.save(refs, samples_path(path))


class MergeError(ValueError):
    """Earlier reports that cannot be merged with each other or with this call."""


def load_parts(paths: list[str], warn: bool = True) -> list[tuple[Path, dict, dict]]:
    """(path, report, 1-GPU references) of each earlier report given to --merge."""
    parts = []
    for p in map(Path, paths):
        report = json.loads(p.read_text())
        if report.get("benchmark") != "bench_sp":
            raise MergeError(f"{p} is not a bench_sp report (benchmark={report.get('benchmark')!r})")
        side = samples_path(p)
        refs = torch.load(side, weights_only=True) if side.exists() else {}
        if warn and not side.exists():
            print(f"[bench_sp] {side} missing: runs compared against {p}'s 1-GPU output get no rel L2",
                  file=sys.stderr)
        parts.append((p, report, refs))
    return parts


def provenance(path: Path, report: dict) -> list[dict]:
    """The measuring calls behind a report: its own `parts` if it is a merge, else the report itself."""
    if report.get("parts"):
        return report["parts"]
    return [{"file": path.name, "commit": report.get("commit"), "date": report.get("date"),
             "card": report.get("card"), "degrees": report.get("degrees"), "workers": report.get("workers", {}),
             "runs": {n: sorted(m["runs"]) for n, m in report.get("models", {}).items()}}]


def merge_into(report: dict, parts, measuring: list[int]) -> None:
    """Take the earlier reports' runs, workers and 1-GPU references into `report` (this call measures the
    degrees in `measuring`). Refuses a different card, quick flag, step count, repeats, LoRA rank, intervals or
    loop degree, and any run measured twice; a different commit is recorded and warned about."""
    same = ("quick", "steps", "repeats", "lora_rank", "intervals", "loop_degree")
    cards = {r.get("card") for _, r, _ in parts} | ({report["card"]} if report.get("card") else set())
    if len(cards - {None}) > 1:
        raise MergeError(f"cards differ: {sorted(c for c in cards if c)}: compare timings of one card only")
    for path, part, refs in parts:
        for key in same:
            mine, theirs = report.get(key), part.get(key)
            if mine != theirs:
                raise MergeError(f"{path}: {key} = {theirs!r}, this call has {mine!r}")
        for name, model in part["models"].items():
            if name not in report["models"]:
                continue
            mine = report["models"][name]
            for key, run in model["runs"].items():
                if key in mine["runs"] or (int(key.split("/")[0]) in measuring):
                    raise MergeError(f"{name} run {key} is both in {path} and in this call or another part")
                mine["runs"][key] = run
            if name in refs and "_ref" not in mine:
                mine["_ref"] = refs[name]
        for degree, w in part.get("workers", {}).items():
            report.setdefault("workers", {}).setdefault(degree, w)
        report.setdefault("card", part.get("card"))
    report["parts"] = [entry for path, part, _ in parts for entry in provenance(path, part)]
    commits = sorted(({e["commit"] for e in report["parts"]} | ({report["commit"]} if measuring else set())) - {None})
    if len(commits) > 1:
        print(f"[bench_sp] merging runs of different commits: {commits}", file=sys.stderr)
        report["commits"] = commits


def _l2(run: dict) -> str:
    return f"{run['rel_l2_vs_1gpu']:.1e}" if "rel_l2_vs_1gpu" in run else "-"


def table(report: dict) -> str:
    lines = [f"{report.get('card', '?')} | commit {report['commit'][:10]} | {report['date']}"]
    for degree, w in report.get("workers", {}).items():
        if "all_to_all" in w:
            lines.append(f"all-to-all over {degree} ranks ({w['backend']}): {w['all_to_all']['algbw_gb_s']:.1f} GB/s "
                         f"for {w['all_to_all']['megabytes']} MB")
    lines.append(f"{'model':18} {'run':>12} {'full s':>8} {'SP x':>6} {'bridged s':>9} {'rel L2':>8}")
    for name, m in report["models"].items():
        d = m.get("derived", {})
        runs = sorted(m["runs"].items(), key=lambda kv: (int(kv[0].split("/")[0]), kv[0]))
        for key, run in runs:
            lines.append(f"{name:18} {key:>12} {run['full_s_median']:>8.4f} {d.get('sp_speedup', {}).get(key, 0):>6.2f} "
                         f"{run['bridged_s_median']:>9.4f} {_l2(run):>8}")
        for key, p in d.get("per_interval", {}).items():
            lines.append(f"{name:18} N={key} bridge@1GPU {p['bridge_speedup_1gpu_computed']:.2f}x; loop at SP "
                         f"{d['loop_degree']} {p['loop_s_measured']:.2f} s vs 1 GPU full "
                         f"{p['one_gpu_full_loop_s_computed']:.1f} s = {p['loop_speedup_vs_1gpu_full']:.2f}x "
                         f"({p['of_product']:.2f} of product)")
        if "anchor" in d:
            a = d["anchor"]
            ours = (f"ours: 50 full steps {a['ours_50_full_steps_1gpu_s_computed']:.0f} s on 1 GPU"
                    + (f", {a['ours_50_full_steps_sp8_s_computed']:.0f} s at SP {ISSUE6_SP} "
                       f"({a['ours_sp8_speedup']:.2f}x)" if "ours_sp8_speedup" in a else ""))
            x = XDIT_ANCHOR
            theirs = (f"xDiT: {x['one_gpu_s']:.0f} s vs {x['eight_gpu_s']} s ({x['speedup']}x)" if a["xdit"]
                      else f"xDiT anchor ({x['speedup']}x) is HunyuanVideo's")
            lines.append(f"{name:18} {ours}; {theirs}")
        if "targets" in d and d["targets"]:
            if issue_of(name) == 6:
                lines.append(f"{name:18} issue-6 targets: " + "; ".join(
                    f"{k}: {t['value']:.2f} {'met' if t['met'] else 'MISSED'}" for k, t in d["targets"].items()))
            else:
                lines.append(f"{name:18} bridge@1GPU {d['bridge_speedup_1gpu_computed']:.2f}x; loop "
                             f"{d['loop_s_measured']:.2f} s vs 1 GPU full {d['one_gpu_full_loop_s_computed']:.1f} s "
                             f"= {d['loop_speedup_vs_1gpu_full']:.2f}x ({d['of_product']:.2f} of product); "
                             f"targets {d['targets']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, choices=sorted(CONFIGS),
                    help="default: wan-14b hunyuan-video (issue 5); with --merge-only, the merged reports' models")
    ap.add_argument("--degrees", nargs="+", type=int, default=None, help="SP degrees measured by this call "
                    "(default 1 2 4)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--intervals", nargs="+", type=int, default=None,
                    help="bridge schedule N of each real loop at the loop degree (default 6)")
    ap.add_argument("--interval", type=int, default=None, help="one N: the same as --intervals N")
    ap.add_argument("--loop-degree", type=int, default=None,
                    help="the degree whose call runs the whole loops (default: the largest degree, merged ones "
                         "included); never below the largest degree, and >= 8 for the issue-6 models")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per median (>= 5 for reports; the issue-6 "
                    "720p models take >= 3: one full step there is ~40 s on one GPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--no-sp1-wrapper", dest="sp1_wrapper", action="store_false",
                    help="skip timing xfuser's wrapper at degree 1")
    ap.add_argument("--call-timeout", type=float, default=420.0,
                    help="seconds one model's measurement may take on a group before it is declared stuck")
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="earlier reports of this benchmark (same card, steps, repeats, intervals, loop degree) "
                         "whose runs join this one's: a run split over several device calls; each JSON's "
                         "<stem>.samples.pt beside it gives the 1-GPU output for rel L2")
    ap.add_argument("--merge-only", action="store_true",
                    help="measure nothing: merge the --merge reports, derive, write --out, print the table (CPU)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_sp.json, else tools/results/)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny configs, 2 gloo ranks, fp32")
    args = ap.parse_args(argv)
    if args.interval is not None and args.intervals is not None:
        ap.error("give --interval N or --intervals N [N ...], not both")
    intervals_given = args.intervals or ([args.interval] if args.interval is not None else None)
    parts = []
    if args.merge_only:
        if not args.merge:
            ap.error("--merge-only needs --merge JSON [JSON ...]")
        try:
            parts = load_parts(args.merge, warn=False)
        except (OSError, ValueError) as e:
            ap.error(str(e))
        first = parts[0][1]
        args.quick = bool(first.get("quick"))
        args.steps, args.repeats, args.lora_rank = first["steps"], first["repeats"], first["lora_rank"]
        intervals_given = intervals_given or first.get("intervals") or [first["interval"]]
        args.loop_degree = args.loop_degree or first.get("loop_degree")
        args.models = args.models or list(dict.fromkeys(n for _, r, _ in parts for n in r["models"]))
        args.degrees = []
    elif args.quick:
        args.models, args.steps = args.models or ["tiny-wan", "tiny-hunyuan-video"], 6
        args.degrees = args.degrees or [1, 2]
        intervals_given = intervals_given or [3, 2]
        args.repeats, args.warmup, args.lora_rank = 2, 1, 4
    else:
        args.models = args.models or ["wan-14b", "hunyuan-video"]
        args.degrees = args.degrees or [1, 2, 4]
    args.intervals = intervals_given or [6]
    if any(n < 1 for n in args.intervals) or len(set(args.intervals)) != len(args.intervals):
        ap.error(f"--intervals must be distinct integers >= 1, got {args.intervals}")
    if any(d < 1 for d in args.degrees):
        ap.error(f"--degrees must be >= 1, got {args.degrees}")
    if args.merge and not args.merge_only:
        try:
            parts = load_parts(args.merge)
        except (OSError, ValueError) as e:
            ap.error(str(e))
    merged_degrees = {int(k.split("/")[0]) for _, r, _ in parts for n, m in r["models"].items()
                      if n in args.models for k in m["runs"]}
    largest = max(set(args.degrees) | merged_degrees)
    args.loop_degree = args.loop_degree or largest
    error = validate(args, largest)
    if error:
        ap.error(error)
    if not args.merge_only:
        for name in args.models:
            for degree in args.degrees:
                try:
                    check_split(name, SHAPES[name], degree)
                except ValueError as e:
                    ap.error(str(e))
    out = Path(args.out or (Path(os.environ["OUT"]) / "bench_sp.json" if os.environ.get("OUT") else
                            ROOT / "tools" / "results" / ("bench_sp_quick.json" if args.quick else "bench_sp.json")))
    report = {**environment(args.quick), "steps": args.steps, "interval": args.intervals[0],
              "intervals": args.intervals, "loop_degree": args.loop_degree, "repeats": args.repeats,
              "lora_rank": args.lora_rank, "degrees": sorted(set(args.degrees) | merged_degrees),
              "models": {n: {"family": CONFIGS[n][0], "shape": SHAPES[n].label(),
                             "latent_tokens": latent_tokens(n, SHAPES[n]), "issue": issue_of(n), "runs": {}}
                         for n in args.models}}
    if parts:
        own = {k: report[k] for k in ("commit", "date")}
        try:
            merge_into(report, parts, args.degrees)
        except MergeError as e:
            ap.error(str(e))
        if args.merge_only:  # the numbers are the parts': name their commit, not this checkout's
            commits = report.get("commits") or [report["parts"][0]["commit"]]
            report.update(commit="+".join(map(str, commits)), merged={"commit": own["commit"], "date": own["date"]})
    if args.merge_only:
        for name in args.models:
            derive(report["models"][name], name, args.loop_degree, args.steps, args.intervals)
        write(report, out)
        print(f"[bench_sp] wrote {out}", file=sys.stderr)
        print(table(report))
        return 0
    return measure_all(args, report, out, parts)


def validate(args, largest: int) -> str | None:
    """Why these arguments would measure something other than the issues ask for, or None."""
    issue6 = [n for n in args.models if issue_of(n) == 6]
    if args.loop_degree < largest:
        return (f"--loop-degree {args.loop_degree} is below the largest degree {largest}: whole loops run only at "
                "the largest degree")
    if issue6 and not args.quick and args.loop_degree < ISSUE6_SP:
        return (f"{', '.join(issue6)}: issue 6 runs whole {args.steps}-step loops only at SP {ISSUE6_SP} (one full "
                f"step is ~40 s on one GPU, so a loop at SP {args.loop_degree} would cost ~{args.steps} x 40 / "
                f"{args.loop_degree} = {args.steps * 40 / args.loop_degree:.0f} s of full steps): pass "
                f"--loop-degree {ISSUE6_SP} and measure degree {ISSUE6_SP} in this call or a later one (--merge)")
    if args.merge_only or args.quick:
        return None
    least = 3 if issue6 and len(issue6) == len(args.models) else 5
    if args.repeats < least:
        return (f"--repeats {args.repeats} < {least}: reports take the median of >= 5 timed steps; only the issue-6 "
                f"720p models ({', '.join(ISSUE6)}) alone may use >= 3 (their full step is ~40 s on one GPU)")
    return None


def measure_all(args, report: dict, out: Path, parts) -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from lbdist.parallel import WorkerGroup, WorkerGroupConfig

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, **({"num_cpus": 2, "num_gpus": 0} if args.quick else {}))
    gpus = 0 if args.quick else None
    if parts:
        report["parts"].append({"file": out.name, "commit": report["commit"], "date": report["date"],
                                "degrees": args.degrees, "runs": {}})
    path_env = os.pathsep.join([str(TOOLS), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {"PYTHONPATH": path_env, "XDIT_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    opts = {"repeats": args.repeats, "warmup": args.warmup, "lora_rank": args.lora_rank, "steps": args.steps,
            "intervals": args.intervals}
    try:
        for degree in args.degrees:
            t = time.perf_counter()
            config = WorkerGroupConfig(num_workers=degree, gpus_per_worker=gpus, env_vars=env,
                                       call_timeout_s=args.call_timeout)
            group = WorkerGroup(config).start()
            try:
                info = group.info[0]
                card = info.get("gpu") or report["host_cpu"]
                if report.setdefault("card", card) != card:
                    raise MergeError(f"this call runs on {card}, the merged reports on {report['card']}")
                report.setdefault("workers", {})[str(degree)] = {
                    "backend": info["backend"], "gpus": [i.get("gpu") for i in group.info],
                    "group_start_s": time.perf_counter() - t}
                if degree > 1:
                    report["workers"][str(degree)]["all_to_all"] = group.run(comm_probe, 4 if args.quick else 256)[0]
                run_degree(group, degree, args.models, opts, report, args)
            finally:
                group.shutdown()
            if parts:
                report["parts"][-1].update(card=report["card"], workers={
                    str(d): report["workers"][str(d)] for d in args.degrees if str(d) in report["workers"]}, runs={
                    n: sorted(k for k in m["runs"] if int(k.split("/")[0]) in args.degrees)
                    for n, m in report["models"].items()})
            for name in args.models:
                derive(report["models"][name], name, args.loop_degree, args.steps, args.intervals)
            write(report, out)
    finally:
        if started_ray:
            ray.shutdown()
    print(f"[bench_sp] wrote {out}", file=sys.stderr)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
