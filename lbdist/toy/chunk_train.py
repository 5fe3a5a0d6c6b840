"""One resumable chunk of toy training on data set v2: the trainer built for short GPU runs (issue 14).

    record = train_chunk(ChunkConfig(family="wan", ckpt_dir="ckpt", out="toys", minutes=8, device="cuda"))

A *chunk* is one process's share of one GPU run. It loads `<ckpt_dir>/<family>.pt` if there is one, and:

1. VAE (until done): the family's VAE class trained as an autoencoder (`flow.vae_loss`) on a `PixelBank` of
   v2 renders made on the device, until reconstructions of fresh renders reach adherence `vae_target` and
   RMSE `vae_target_rmse`, or `vae_minutes` of VAE time have passed over all chunks; then its latent
   statistics are fixed once (`flow.set_latent_stats`);
2. transformer: rectified-flow training (`flow.flow_loss`, the pipeline's own noise levels) on a
   `LatentBank`: latents and prompt conditioning cached on the device once per slot, batches indexed on the
   device, bf16 autocast, fused AdamW, EMA; optionally `torch.compile` of the transformer (`compile`), the
   SDPA backend guard of `cuda_guard.py` (FLUX on CUDA), a slice of the bank re-rendered every
   `refresh_every` steps; until `minutes - reserve_minutes` have passed since the process started;
3. checkpoint (`checkpoint.py`: every `ckpt_every_s` seconds and at the end of the chunk), then the EMA
   weights sample the held-out prompts (`eval_prompts`, full compute) and some training prompts; adherence
   overall and per attribute goes into `<family>.progress.json`; the bar is met when held-out adherence
   >= `target` and every attribute >= `attribute_target`, which marks the family done;
4. export (`export`): the EMA pipeline, transformer and VAE in bf16, to `<out>/<family>` (`save_pipeline`).

A family already done is skipped. Prompts are v2 (`PROMPT_TOKENS_V2` text tokens); Wan drops the prompt for
`prompt_dropout` of its samples (it samples with classifier-free guidance), the others train at their call's
guidance value.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from . import flow
from .bank import LatentBank, PixelBank, SceneStream, autocast, to_model
from .build import CALL_DEFAULTS, FAMILIES, build_pipeline
from .build import call_defaults as toy_call_defaults
from .checkpoint import (CKPT_DTYPES, append_progress, checkpoint_path, compact, compact_optimizer, load_checkpoint,
                         load_progress, run_facts, save_checkpoint)
from .cuda_guard import SDPA_CHOICES, sdpa_context
from .dataset import DataConfig, calibration_prompts, evaluation_prompts, grammar_words
from .dataset_v2 import PROMPT_TOKENS_V2
from .train import _Ema, save_pipeline

COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "aot_eager")
STEADY_AFTER = 20  # steps of a chunk after which its steps/s is measured (compilation, CUDA-graph capture done)


@dataclass(frozen=True)
class ChunkConfig:
    """One chunk of one family. Times are wall-clock seconds/minutes of this process.

    Attributes:
        family: "wan", "hunyuan_video" or "flux". ckpt_dir: where `<family>.pt` and `.progress.json` live
            (carry it between runs). out: export directory of finished pipelines (None: no export).
        minutes: this chunk's budget, start-up to export (default 8: one command of a GPU run is <= 10).
        device: torch device. size: `build.py` size ("deep" ships; "tiny" for tests). data: v2 `DataConfig`.
        seed: weights, data and noise. batch: transformer batch; lr, warmup: AdamW peak rate and linear warm-up
            steps (repeated each chunk unless the optimizer state is carried); ema: EMA decay.
        prompt_dropout: Wan's share of empty-prompt samples (for classifier-free guidance).
        bank, refresh, refresh_every: latent-bank slots, slots re-rendered, every so many steps (0: never).
        vae_minutes: VAE training time over all chunks; vae_batch, vae_bank, vae_lr, kl_weight,
            anchor_weight: its batch, pixel-bank size, rate and loss weights (`flow.vae_loss`);
            vae_check_every, vae_check_samples, vae_target, vae_target_rmse: the early stop of the VAE.
        compile: "off", a `torch.compile` mode ("default", "reduce-overhead" = CUDA graphs,
            "max-autotune-no-cudagraphs") or "aot_eager" (backend, for CPU tests of the plumbing).
        sdpa: attention backends of training steps (`cuda_guard.SDPA_CHOICES`; "auto": FLUX on CUDA uses
            flash / math, the guard for the recorded crash).
        ckpt_every_s, ckpt_dtype ("bf16" or "fp32"), ckpt_ema, ckpt_optimizer: checkpoint cadence and contents.
        reserve_minutes: kept at the end for checkpoint, evaluation and export.
        eval_prompts, eval_seeds, eval_steps (None: the call's), eval_train_prompts: the chunk's evaluation.
        target, attribute_target: the stop bar. log_every: steps between log lines.
        max_steps: optional cap on transformer steps per chunk; max_vae_steps: optional cap on VAE steps in all,
            after which the VAE counts as done (tests).
    """

    family: str
    ckpt_dir: str
    out: str | None = None
    minutes: float = 8.0
    device: str = "cuda"
    size: str = "deep"
    data: DataConfig = field(default_factory=lambda: DataConfig(version="v2"))
    seed: int = 0
    batch: int = 256
    lr: float = 5e-4
    warmup: int = 200
    ema: float = 0.999
    prompt_dropout: float = 0.1
    bank: int = 16384
    refresh: int = 1024
    refresh_every: int = 1000
    vae_minutes: float = 3.0
    vae_batch: int = 64
    vae_bank: int = 4096
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    anchor_weight: float = 1.0
    vae_check_every: int = 250
    vae_check_samples: int = 32
    vae_target: float = 0.98
    vae_target_rmse: float = 10.0
    compile: str = "off"
    sdpa: str = "auto"
    ckpt_every_s: float = 120.0
    ckpt_dtype: str = "bf16"
    ckpt_ema: bool = False
    ckpt_optimizer: bool = False
    reserve_minutes: float = 1.0
    eval_prompts: int = 64
    eval_seeds: int = 1
    eval_steps: int | None = None
    eval_train_prompts: int = 16
    target: float = 0.9
    attribute_target: float = 0.8
    log_every: int = 200
    max_steps: int | None = None
    max_vae_steps: int | None = None

    def __post_init__(self):
        checks = [(self.family in FAMILIES, f"family={self.family!r}: must be one of {FAMILIES}"),
                  (self.data.version == "v2", f"data.version={self.data.version!r}: the chunk trainer renders "
                                              f"v2 scenes; v1 toys train with lbdist.toy.train"),
                  (self.size == "tiny" or (self.size in CALL_DEFAULTS[self.family] if self.family in FAMILIES else True),
                   f"size={self.size!r}: must be one of {['tiny'] + sorted(CALL_DEFAULTS.get(self.family, {}))}"),
                  (0.05 <= self.minutes <= 24 * 60, f"minutes={self.minutes}: must be in [0.05, 1440]"),
                  (0.0 <= self.reserve_minutes < self.minutes,
                   f"reserve_minutes={self.reserve_minutes}: must be in [0, minutes={self.minutes})"),
                  (self.compile in COMPILE_CHOICES, f"compile={self.compile!r}: must be one of {COMPILE_CHOICES}"),
                  (self.sdpa in SDPA_CHOICES, f"sdpa={self.sdpa!r}: must be one of {SDPA_CHOICES}"),
                  (self.ckpt_dtype in CKPT_DTYPES, f"ckpt_dtype={self.ckpt_dtype!r}: must be one of "
                                                   f"{tuple(CKPT_DTYPES)}"),
                  (0.0 <= self.prompt_dropout < 1.0, f"prompt_dropout={self.prompt_dropout}: must be in [0, 1)"),
                  (0.0 <= self.ema < 1.0, f"ema={self.ema}: must be in [0, 1)"),
                  (0.0 <= self.refresh <= self.bank, f"refresh={self.refresh}: must be in [0, bank={self.bank}]"),
                  (0.0 < self.target <= 1.0 and 0.0 < self.attribute_target <= 1.0,
                   f"target={self.target}, attribute_target={self.attribute_target}: must be in (0, 1]"),
                  (self.lr > 0 and self.vae_lr > 0, f"lr={self.lr}, vae_lr={self.vae_lr}: must be > 0")]
        for name in ("batch", "bank", "vae_batch", "vae_bank", "vae_check_every", "vae_check_samples",
                     "eval_prompts", "eval_seeds", "log_every"):
            checks.append((getattr(self, name) >= 1, f"{name}={getattr(self, name)}: must be >= 1"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def kind(self) -> str:
        from ..models import get_spec_by_family

        return "video" if get_spec_by_family(self.family).is_video else "image"


def call_defaults(cfg: ChunkConfig) -> dict:
    """Pipeline call arguments of the trained toy (its `lbdist_defaults.json`)."""
    out = dict(toy_call_defaults(cfg.family, cfg.size), height=cfg.data.height, width=cfg.data.width,
               max_sequence_length=PROMPT_TOKENS_V2)
    if cfg.kind == "video":
        out["num_frames"] = cfg.data.num_frames
    out.setdefault("num_inference_steps", 50)
    if cfg.size == "tiny":
        out["num_inference_steps"] = 4
    return out


class _Run:
    """State of one chunk: config, clock, pipeline, counters, and the checkpoint it resumed from."""

    def __init__(self, cfg: ChunkConfig):
        self.cfg, self.t0, self.device = cfg, time.time(), torch.device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self.expect = {"family": cfg.family, "size": cfg.size, "data": asdict(cfg.data), "seed": cfg.seed}
        self.state = load_checkpoint(checkpoint_path(cfg.ckpt_dir, cfg.family), self.expect) or {}
        self.chunk = int(self.state.get("chunks", 0))
        self.vae_done, self.latent_stats = self.state.get("vae_done", False), self.state.get("latent_stats")
        self.vae_steps, self.vae_elapsed = self.state.get("vae_steps", 0), self.state.get("vae_elapsed", 0.0)
        self.steps, self.chunk_steps, self.train_seconds, self.loss = self.state.get("steps", 0), 0, 0.0, None
        self.opt = self.vae_opt = self.ema = self.steady = None
        self.rate = 0.0
        self.last_ckpt = time.time()

    def log(self, msg: str) -> None:
        print(f"[{self.cfg.family} chunk {self.chunk} {time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def left(self) -> float:
        """Seconds left before the reserve for checkpoint, evaluation and export."""
        return self.cfg.minutes * 60.0 - self.cfg.reserve_minutes * 60.0 - (time.time() - self.t0)

    def payload(self) -> dict:
        cfg, dtype = self.cfg, CKPT_DTYPES[self.cfg.ckpt_dtype]
        out = {**self.expect, "vae_done": self.vae_done, "vae": compact(self.pipe.vae.state_dict(), dtype),
               "vae_steps": self.vae_steps, "vae_elapsed": self.vae_elapsed, "latent_stats": self.latent_stats,
               "transformer": compact(self.pipe.transformer.state_dict(), dtype) if self.steps else None,
               "steps": self.steps, "chunks": self.chunk}
        if cfg.ckpt_ema and self.ema is not None:
            out["ema"] = [s.detach().to("cpu", dtype) for s in self.ema.shadow]
        if cfg.ckpt_optimizer:
            for key, opt in (("opt", self.opt), ("vae_opt", self.vae_opt)):
                if opt is not None:
                    out[key] = compact_optimizer(opt.state_dict(), dtype)
        return out

    def save(self, force: bool = False) -> None:
        if force or time.time() - self.last_ckpt >= self.cfg.ckpt_every_s:
            save_checkpoint(checkpoint_path(self.cfg.ckpt_dir, self.cfg.family), self.payload())
            self.last_ckpt = time.time()


def _build(run: _Run):
    cfg = run.cfg
    pipe = build_pipeline(cfg.family, cfg.size, words=grammar_words("v2"), seed=cfg.seed).to(run.device)
    for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    state = run.state
    if state.get("vae") is not None:
        pipe.vae.load_state_dict(state["vae"])
    if state.get("latent_stats"):
        pipe.vae.register_to_config(**state["latent_stats"])
    if state.get("transformer") is not None:
        pipe.transformer.load_state_dict(state["transformer"])
    return pipe


def _vae_check(run: _Run, n: int) -> tuple[float, float]:
    """Adherence and RMSE (0-255) of VAE reconstructions of `n` fresh training renders."""
    from .metric import mean_adherence
    from .render_v2 import render_v2

    scenes = SceneStream(run.cfg.kind, run.cfg.data, run.cfg.seed * 7 + 5).take(n)
    pixels = render_v2(scenes, run.cfg.data, run.device)
    with torch.no_grad(), autocast(run.device):
        recon = run.pipe.vae.decode(flow.raw_latents(run.pipe, to_model(pixels))).sample.float().clamp(-1, 1)
    recon = (recon + 1.0) * 127.5
    recon = recon.permute(0, 2, 3, 4, 1) if recon.ndim == 5 else recon.permute(0, 2, 3, 1)
    rmse = float((recon - pixels.float()).pow(2).mean().sqrt())
    frames = list(recon.round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    return mean_adherence(frames, [s.prompt for s in scenes]), rmse


def _vae_phase(run: _Run) -> None:
    """Train the VAE until its target, its time over all chunks, or this chunk's time (see the docstring)."""
    cfg, vae = run.cfg, run.pipe.vae
    bank = PixelBank(SceneStream(cfg.kind, cfg.data, cfg.seed * 1_000 + 2 * run.chunk), cfg.vae_bank, run.device)
    run.vae_opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, betas=(0.9, 0.99), fused=run.cuda)
    if "vae_opt" in run.state:
        run.vae_opt.load_state_dict(run.state["vae_opt"])
    gen = torch.Generator(run.device).manual_seed(cfg.seed * 7919 + run.vae_steps)
    start, first, acc = time.time(), run.vae_steps, torch.zeros((), device=run.device)
    vae.train()
    while run.left() > 0:
        if run.vae_elapsed + time.time() - start >= cfg.vae_minutes * 60.0 or \
                (cfg.max_vae_steps is not None and run.vae_steps >= cfg.max_vae_steps):
            run.vae_done = True
            break
        for group in run.vae_opt.param_groups:
            group["lr"] = cfg.vae_lr * min(1.0, (run.vae_steps + 1) / max(cfg.warmup, 1))
        with autocast(run.device):
            loss, _ = flow.vae_loss(run.pipe, to_model(bank.batch(cfg.vae_batch, gen)), cfg.kl_weight,
                                    cfg.anchor_weight)
        run.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        run.vae_opt.step()
        run.vae_steps, acc = run.vae_steps + 1, acc + loss.detach().float()
        if run.vae_steps % cfg.vae_check_every == 0 or run.vae_steps == first + 1:
            vae.eval()
            score, rmse = _vae_check(run, cfg.vae_check_samples)
            vae.train()
            run.log(f"vae step {run.vae_steps} loss {float(acc) / max(run.vae_steps - first, 1):.4f} | "
                    f"reconstructions: adherence {score:.3f} rmse {rmse:.1f}/255")
            if score >= cfg.vae_target and rmse <= cfg.vae_target_rmse:
                run.vae_done = True
                break
        if cfg.refresh_every and run.vae_steps % cfg.refresh_every == 0:
            bank.refresh(min(cfg.refresh, cfg.vae_bank), gen)
        run.save()
    run.vae_elapsed += time.time() - start
    vae.eval()
    run.log(f"vae: {run.vae_steps} steps, {run.vae_elapsed:.0f}s in all, done={run.vae_done}")


def _compile(run: _Run) -> None:
    choice = run.cfg.compile
    if choice == "off":
        return
    kwargs = {"backend": "aot_eager"} if choice == "aot_eager" else {"mode": choice}
    torch._dynamo.config.suppress_errors = True  # a compiler failure falls back to eager instead of ending the run
    run.pipe.transformer.compile(**kwargs)
    run.log(f"transformer compiled ({kwargs}; first steps include compilation)")


def _optimizer(run: _Run):
    cfg, model = run.cfg, run.pipe.transformer
    run.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.99),
                                weight_decay=0.01, fused=run.cuda)
    restored = "opt" in run.state
    if restored:
        run.opt.load_state_dict(run.state["opt"])
    run.ema = _Ema(model, cfg.ema, [s.float() for s in run.state["ema"]] if "ema" in run.state else None)
    return restored


def _sync(run: _Run) -> None:
    if run.cuda:
        torch.cuda.synchronize(run.device)


def _rate(run: _Run, start: float) -> float:
    """Steps per second since step `STEADY_AFTER` of the chunk (compilation and warm-up excluded) when it was
    reached, else since the phase began."""
    first, since = run.steady or (0, start)
    return (run.chunk_steps - first) / max(time.time() - since, 1e-6)


def _transformer_phase(run: _Run, bank: LatentBank) -> None:
    """Flow-matching steps until the chunk's time (or `max_steps`) is spent."""
    cfg, model = run.cfg, run.pipe.transformer
    restored = _optimizer(run)
    shift = flow.effective_shift(run.pipe, tuple(bank.latents.shape))
    guidance = float(toy_call_defaults(cfg.family, cfg.size).get("guidance_scale", 1.0))
    from ..models import get_spec_by_family

    # prompt dropout teaches the unconditional branch: only families that sample with true CFG need it
    dropout = cfg.prompt_dropout if len(get_spec_by_family(cfg.family).branches) > 1 else 0.0
    gen = torch.Generator(run.device).manual_seed(cfg.seed * 1_000_003 + 7 * run.chunk + 1)
    _compile(run)
    run.log(f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, bank "
            f"{tuple(bank.latents.shape)}, shift {shift:.2f}, step {run.steps}")
    model.train()
    acc, n_acc, start = torch.zeros((), device=run.device), 0, time.time()
    while run.left() > 0 and (cfg.max_steps is None or run.chunk_steps < cfg.max_steps):
        warm = 1.0 if restored else min(1.0, (run.chunk_steps + 1) / max(cfg.warmup, 1))
        for group in run.opt.param_groups:
            group["lr"] = cfg.lr * warm
        x0, cond = bank.sample(cfg.batch, gen, dropout)
        with sdpa_context(cfg.family, run.device, cfg.sdpa), autocast(run.device):
            loss = flow.flow_loss(run.pipe, x0, cond, shift, guidance, gen)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        run.opt.step()
        run.ema.update(run.steps)
        run.steps, run.chunk_steps, acc, n_acc = run.steps + 1, run.chunk_steps + 1, acc + loss.detach(), n_acc + 1
        if run.chunk_steps == STEADY_AFTER:
            _sync(run)
            run.steady = (run.chunk_steps, time.time())
        if run.chunk_steps % cfg.log_every == 0 or run.chunk_steps == 1:
            run.loss, acc, n_acc = float(acc) / n_acc, torch.zeros_like(acc), 0
            run.log(f"step {run.steps} loss {run.loss:.4f} lr {run.opt.param_groups[0]['lr']:.2e} "
                    f"{_rate(run, start):.1f} it/s")
        if cfg.refresh and cfg.refresh_every and run.chunk_steps % cfg.refresh_every == 0:
            bank.refresh(cfg.refresh, gen)
        run.save()
    if n_acc:
        run.loss = float(acc) / n_acc
    _sync(run)
    run.train_seconds, run.rate = time.time() - start, _rate(run, start)
    model.eval()


def _evaluate(run: _Run, defaults: dict) -> dict:
    """Held-out and training-prompt adherence of the EMA weights, overall and per attribute."""
    from .evaluate import evaluate

    cfg = run.cfg
    overrides = {"num_inference_steps": cfg.eval_steps} if cfg.eval_steps else {}
    eager = torch.compiler.set_stance("force_eager") if cfg.compile != "off" else nullcontext()
    with torch.no_grad(), eager, autocast(run.device):
        held = evaluate(run.pipe, evaluation_prompts(cfg.kind, cfg.eval_prompts, cfg.data), defaults,
                        seeds=range(cfg.eval_seeds), **overrides)
        train = evaluate(run.pipe, calibration_prompts(cfg.kind, cfg.eval_train_prompts, config=cfg.data),
                         defaults, seeds=(0,), **overrides) if cfg.eval_train_prompts else None
    return {"held": held, "train": train}


def _record(run: _Run, index: int, report: dict, facts: dict) -> dict:
    cfg, held = run.cfg, report["held"]
    met = held["adherence"] >= cfg.target and all(v >= cfg.attribute_target for v in held["per_attribute"].values())
    overall = run.chunk_steps / run.train_seconds if run.train_seconds else 0.0
    return {"chunk": index, **facts, "minutes": round((time.time() - run.t0) / 60.0, 2),
            "vae_steps": run.vae_steps, "vae_done": run.vae_done, "steps": run.steps, "chunk_steps": run.chunk_steps,
            "steps_per_s": round(run.rate, 2), "steps_per_s_with_warmup": round(overall, 2),
            "train_seconds": round(run.train_seconds, 1), "batch": cfg.batch, "compile": cfg.compile, "loss": run.loss,
            "heldout_adherence": held["adherence"], "heldout_per_attribute": held["per_attribute"],
            "heldout_samples": held["n"],
            "train_adherence": report["train"]["adherence"] if report["train"] else None, "met": met}


def to_bf16(module: torch.nn.Module) -> None:
    """Cast floating parameters and buffers to bf16, except in the class's `_keep_in_fp32_modules` (diffusers
    loads them back in fp32 either way; stored so, they lose nothing)."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not keep & set(name.split(".")):
            tensor.data = tensor.data.to(torch.bfloat16)


def _export(run: _Run, defaults: dict, record: dict, report: dict) -> None:
    from pathlib import Path

    pipe = run.pipe
    for module in (pipe.transformer, pipe.vae):
        to_bf16(module)
    summary = {**record, "family": run.cfg.family, "size": run.cfg.size, "data": asdict(run.cfg.data),
               "heldout_rows": report["held"]["rows"], "config": asdict(run.cfg)}
    out = save_pipeline(pipe, Path(run.cfg.out) / run.cfg.family, defaults, summary, report["held"])
    run.log(f"exported the EMA pipeline (transformer and VAE in bf16) to {out}")


def train_chunk(cfg: ChunkConfig) -> dict:
    """Run one chunk (see the module docstring); returns its progress record (also appended to the file)."""
    torch.manual_seed(cfg.seed)
    run = _Run(cfg)
    if load_progress(cfg.ckpt_dir, cfg.family).get("done"):
        run.log("done already (held-out bar met): nothing to train")
        return {"chunk": run.chunk, "skipped": True, "met": True}
    if run.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    run.pipe, facts = _build(run), run_facts(run.device)
    run.log(f"start: {facts}, step {run.steps}, vae steps {run.vae_steps}, vae done {run.vae_done}")
    if not run.vae_done:
        _vae_phase(run)
    if run.vae_done and run.left() > 0:
        defaults = call_defaults(cfg)
        stream = SceneStream(cfg.kind, cfg.data, cfg.seed * 1_000 + 2 * run.chunk + 1)
        bank = LatentBank(run.pipe, stream, cfg.bank, run.device,
                          (defaults["max_sequence_length"], defaults.get("prompt_template")),
                          fit_stats=run.latent_stats is None)
        if bank.stats is not None:
            run.latent_stats = bank.stats
        _transformer_phase(run, bank)
        del bank
    run.chunk += 1
    run.save(force=True)
    return _finish(run, facts)


def _finish(run: _Run, facts: dict) -> dict:
    cfg = run.cfg
    if run.ema is None:  # no transformer step this chunk (VAE still training): nothing to evaluate yet
        record = {"chunk": run.chunk - 1, **facts, "minutes": round((time.time() - run.t0) / 60.0, 2),
                  "vae_steps": run.vae_steps, "vae_done": run.vae_done, "steps": run.steps, "met": False}
        append_progress(cfg.ckpt_dir, cfg.family, record, False, {"size": cfg.size, "data": asdict(cfg.data)})
        run.log("SUMMARY " + json.dumps(record))
        return record
    run.ema.copy_to()
    defaults = call_defaults(cfg)
    report = _evaluate(run, defaults)
    record = _record(run, run.chunk - 1, report, facts)
    append_progress(cfg.ckpt_dir, cfg.family, record, record["met"], {"size": cfg.size, "data": asdict(cfg.data)})
    run.log("SUMMARY " + json.dumps(record))
    if cfg.out:
        _export(run, defaults, record, report)
    return record
