"""Training of one bundled toy pipeline: VAE as an autoencoder, then the transformer by flow matching.

`train_toy(TrainConfig(family="wan", out="lbdist/toy/weights/wan", minutes=8, device="cuda"))` builds the
family's pipeline at size "toy" (`build.py`), and, within the time budget:

1. renders a bank of training scenes (`dataset.py`, training combinations only);
2. trains the pipeline's own VAE class (small config) as an autoencoder on them, so that decoded latents show
   the scene: foreground-weighted L1 + MSE, a small KL, and a *latent anchor* that pulls the first latent
   channels toward the clip at latent resolution (`flow.vae_loss`; a plain autoencoder of the Wan class
   learned several times slower). It stops early once reconstructions of fresh renders score adherence
   >= 0.99 with RMSE <= 8/255. The latents' statistics go into the VAE config fields the pipeline decodes with;
3. encodes the bank to latents and every training prompt with the pipeline's frozen, randomly initialised
   text encoders (word-level vocabulary: every word already has its own random vector, and the transformer's
   own text projections are trained), then trains the transformer with the rectified-flow loss that the
   pipeline's `FlowMatchEulerDiscreteScheduler` integrates, at the noise levels it samples. Wan drops the prompt
   to the empty negative prompt 10 % of the time (classifier-free guidance); HunyuanVideo and FLUX, guidance-
   distilled architectures, always get the fixed guidance value of their call defaults. AdamW, warm-up then
   cosine decay over the phase's time, grad clip 1, EMA of weights (saved), bf16 autocast on CUDA; a slice of
   the bank is re-rendered now and then so the model sees fresh geometry;
4. samples the held-out prompts with full compute, scores prompt adherence (`metric.py`), and writes the
   pipeline with `save_pretrained` plus `lbdist_defaults.json`, `lbdist_eval.json` and `samples.png`,
   atomically (temporary directory, then rename).

A checkpoint (`<out>.ckpt.pt` unless given) is written every `ckpt_every_s` seconds and at each phase end;
`resume=True` continues from it (the budget is then this run's; the cosine restarts over the longer span).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from . import flow
from ..models import get_spec_by_family
from .build import CALL_DEFAULTS, FAMILIES, build_pipeline
from .dataset import GRAMMAR_WORDS, TEMPLATES, DataConfig, calibration_prompts, evaluation_prompts, make_prompt
from .dataset import render, sample_scenes, split_combinations

QUICK_DATA = DataConfig(height=32, width=32, num_frames=5, radius=(4.0, 5.0), speed=(1.0, 1.5), jitter=2.0)


@dataclass(frozen=True)
class TrainConfig:
    """One toy training run. Times are wall-clock; steps stop at whichever comes first, time or `max_*`.

    Attributes:
        family: "wan", "hunyuan_video" or "flux".
        out: directory the finished pipeline is written to (replaced atomically).
        minutes: wall-clock budget of this run, all phases included (default 8).
        device: torch device ("cpu", "cuda", "cuda:1").
        size: architecture size in `build.py` ("toy" ships; "tiny" is for the quick test).
        data: canvas and motion of the scenes (`DataConfig`).
        seed: seed of weights, data and noise.
        vae_fraction: the most of the budget the VAE phase may use (default 0.3; it stops early when good).
        reserve_minutes: time kept for evaluation and saving (default 0.75).
        vae_batch, batch: clips or images per optimiser step (VAE, transformer).
        vae_lr, lr: AdamW peak learning rates; warmup: linear warm-up steps of both phases.
        kl_weight: weight of the mean KL term of the VAE loss (small: latents stay informative).
        anchor_weight: weight of the latent anchor (first latent channels -> the clip at latent resolution,
            see `flow.vae_loss`); 0 trains a plain autoencoder.
        vae_check_every, vae_check_samples: VAE steps between checks of reconstructions of that many fresh
            training renders; the VAE phase ends early once their adherence >= vae_target and RMSE <= vae_target_rmse (0-255 scale).
        prompt_dropout: probability of training on the empty prompt (Wan only: it samples with CFG).
        bank: rendered scenes kept for training; refresh / refresh_every: scenes re-rendered every so many
            transformer steps (0 disables).
        ema: EMA decay of the transformer weights (warmed up as (1+n)/(10+n)).
        log_every: transformer steps between log lines (the VAE logs 4x less often).
        ckpt_every_s: seconds between checkpoints.
        eval_seeds: samples per held-out prompt; eval_limit: first n held-out prompts (None: all);
        eval_steps: denoising steps of the evaluation (None: the call defaults, i.e. full compute).
        max_vae_steps, max_steps: optional step caps.
        ckpt: checkpoint path (None: `<out>.ckpt.pt`); resume: continue from it if it exists.
    """

    family: str
    out: str
    minutes: float = 8.0
    device: str = "cpu"
    size: str = "toy"
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    vae_fraction: float = 0.3
    reserve_minutes: float = 0.75
    vae_batch: int = 32
    batch: int = 256
    vae_lr: float = 2e-3
    lr: float = 5e-4
    warmup: int = 100
    kl_weight: float = 1e-4
    anchor_weight: float = 1.0
    vae_check_every: int = 150
    vae_check_samples: int = 24
    vae_target: float = 0.99
    vae_target_rmse: float = 8.0
    prompt_dropout: float = 0.1
    bank: int = 8192
    refresh: int = 256
    refresh_every: int = 250
    ema: float = 0.999
    log_every: int = 50
    ckpt_every_s: float = 60.0
    eval_seeds: int = 2
    eval_limit: int | None = None
    eval_steps: int | None = None
    max_vae_steps: int | None = None
    max_steps: int | None = None
    ckpt: str | None = None
    resume: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: must be one of {FAMILIES}")
        if not 0.05 <= self.minutes <= 24 * 60:
            raise ValueError(f"minutes={self.minutes}: must be in [0.05, 1440]")
        if not 0.0 < self.vae_fraction < 1.0:
            raise ValueError(f"vae_fraction={self.vae_fraction}: must be in (0, 1)")
        if not 0.0 <= self.reserve_minutes < self.minutes:
            raise ValueError(f"reserve_minutes={self.reserve_minutes}: must be in [0, minutes={self.minutes})")
        for name in ("vae_batch", "batch", "bank", "log_every", "eval_seeds", "vae_check_every", "vae_check_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout={self.prompt_dropout}: must be in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema={self.ema}: must be in [0, 1)")
        if self.refresh < 0 or self.refresh > self.bank or self.refresh_every < 0:
            raise ValueError(f"refresh={self.refresh}, refresh_every={self.refresh_every}: need "
                             f"0 <= refresh <= bank={self.bank} and refresh_every >= 0")
        if self.lr <= 0 or self.vae_lr <= 0 or min(self.kl_weight, self.anchor_weight, self.warmup) < 0:
            raise ValueError(f"lr={self.lr}, vae_lr={self.vae_lr} must be > 0; kl_weight={self.kl_weight}, "
                             f"anchor_weight={self.anchor_weight}, "
                             f"warmup={self.warmup} must be >= 0")

    @property
    def ckpt_path(self) -> Path:
        return Path(self.ckpt) if self.ckpt else Path(f"{str(self.out).rstrip('/')}.ckpt.pt")

    @property
    def kind(self) -> str:
        from ..models import get_spec_by_family

        return "video" if get_spec_by_family(self.family).is_video else "image"


def call_defaults(cfg: TrainConfig) -> dict:
    """The pipeline call arguments that fit the trained model (written to lbdist_defaults.json)."""
    out = dict(CALL_DEFAULTS[cfg.family]["toy"], height=cfg.data.height, width=cfg.data.width)
    if cfg.kind == "video":
        out["num_frames"] = cfg.data.num_frames
    if cfg.size == "tiny":  # test fixtures: a few steps are enough
        out["num_inference_steps"] = 4
    return out


class _Run:
    """Mutable state of one run: pipeline, banks, clocks, history, logging and checkpoints."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.t0 = cfg, time.time()
        self.device = torch.device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self.last_ckpt = time.time()
        self.history: dict[str, list] = {"vae": [], "transformer": []}
        self.state = None
        if cfg.resume and cfg.ckpt_path.exists():
            self.state = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=False)
            self.history = self.state.get("history", self.history)
            self.log(f"resuming from {cfg.ckpt_path} (phase {self.state['phase']})")

    def log(self, msg: str) -> None:
        print(f"[{self.cfg.family} {time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def remaining(self) -> float:
        return self.cfg.minutes * 60.0 - (time.time() - self.t0)

    def save_ckpt(self, payload, force: bool = False) -> None:
        """Write `payload()` (a callable, so nothing is gathered between checkpoints) when one is due."""
        if not force and time.time() - self.last_ckpt < self.cfg.ckpt_every_s:
            return
        payload = {**payload(), "history": self.history, "config": asdict(self.cfg)}
        atomic_write(self.cfg.ckpt_path, lambda tmp: torch.save(payload, tmp))
        self.last_ckpt = time.time()


def _render_bank(cfg: TrainConfig, n: int, seed: int, prompt_index: dict) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = sample_scenes(n, cfg.kind, "train", seed=seed, config=cfg.data)
    pixels = torch.from_numpy(np.stack([render(s, cfg.data) for s in scenes]))
    idx = torch.tensor([prompt_index[s.prompt] for s in scenes])
    return pixels, idx


def _to_model(pixels: torch.Tensor, device) -> torch.Tensor:
    """uint8 `(B, F, H, W, 3)` / `(B, H, W, 3)` -> float in [-1, 1], `(B, 3, F, H, W)` / `(B, 3, H, W)`."""
    x = pixels.to(device, non_blocking=True).float() / 127.5 - 1.0
    return x.permute(0, 4, 1, 2, 3) if x.ndim == 5 else x.permute(0, 3, 1, 2)


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def _train_vae(run: _Run, pipe, pixels: torch.Tensor) -> None:
    """Autoencoder training until the budget is spent, or earlier once reconstructions are good enough."""
    cfg, vae = run.cfg, pipe.vae
    state = run.state or {}
    steps, elapsed = state.get("vae_steps", 0), state.get("vae_elapsed", 0.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    budget = cfg.vae_fraction * cfg.minutes * 60.0
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + steps)
    start = time.time() - elapsed
    acc, n_acc = torch.zeros((), device=run.device), 0
    vae.train()
    while time.time() - start < budget and (cfg.max_vae_steps is None or steps < cfg.max_vae_steps):
        idx = torch.randint(len(pixels), (cfg.vae_batch,), generator=gen)
        x = _to_model(pixels[idx], run.device)
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(steps, cfg.warmup, (time.time() - start) / budget)
        with run.autocast():
            loss, parts = flow.vae_loss(pipe, x, cfg.kl_weight, cfg.anchor_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        steps, acc, n_acc = steps + 1, acc + loss.detach().float(), n_acc + 1
        if steps % cfg.vae_check_every == 0 or steps == 1:
            vae.eval()
            score, rmse = _vae_check(run, pipe, "train", seed=cfg.seed + 7)
            vae.train()
            mean_loss, acc, n_acc = float(acc) / n_acc, torch.zeros_like(acc), 0
            run.history["vae"].append([steps, round(time.time() - start, 1), round(mean_loss, 5), score, rmse])
            run.log(f"vae step {steps} loss {mean_loss:.4f} anchor {float(parts['anchor']):.4f} "
                    f"kl {float(parts['kl']):.3f} | reconstructions: "
                    f"adherence {score:.3f} rmse {rmse:.1f}/255")
            if score >= cfg.vae_target and rmse <= cfg.vae_target_rmse:
                run.log(f"vae reached adherence >= {cfg.vae_target} and rmse <= {cfg.vae_target_rmse}: stopping")
                break
        run.save_ckpt(lambda: {"phase": "vae", "vae": vae.state_dict(), "vae_opt": opt.state_dict(),
                               "vae_steps": steps, "vae_elapsed": time.time() - start})
    vae.eval()
    run.vae_steps = steps
    run.log(f"vae done: {steps} steps in {time.time() - start:.0f}s")


@torch.no_grad()
def _vae_check(run: _Run, pipe, split: str, seed: int, n: int | None = None) -> tuple[float, float]:
    """Adherence and RMSE (0-255) of VAE reconstructions of `n` fresh renders of `split`."""
    from .metric import mean_adherence

    cfg = run.cfg
    scenes = sample_scenes(n or cfg.vae_check_samples, cfg.kind, split, seed=seed, config=cfg.data)
    pixels = torch.from_numpy(np.stack([render(s, cfg.data) for s in scenes]))
    with run.autocast():
        recon = pipe.vae.decode(_encode(run, pipe, pixels)).sample.float().clamp(-1, 1)
    recon = (recon + 1.0) * 127.5
    recon = (recon.permute(0, 2, 3, 4, 1) if recon.ndim == 5 else recon.permute(0, 2, 3, 1)).cpu()
    rmse = float((recon - pixels.float()).pow(2).mean().sqrt())
    frames = list(recon.round().clamp(0, 255).to(torch.uint8).numpy())
    return mean_adherence(frames, [s.prompt for s in scenes]), rmse


@torch.no_grad()
def _encode(run: _Run, pipe, pixels: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(pixels), chunk):
        with run.autocast():
            out.append(flow.raw_latents(pipe, _to_model(pixels[i:i + chunk], run.device)).float())
    return torch.cat(out)


class _Ema:
    def __init__(self, module: torch.nn.Module, decay: float, state=None):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params] if state is None else \
            [s.to(p.device) for s, p in zip(state, self.params)]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def _train_transformer(run: _Run, pipe, latents, prompt_idx, cond, empty_idx, refresh_fn) -> None:
    cfg, model = run.cfg, pipe.transformer
    state = run.state if run.state and run.state["phase"] in ("transformer", "done") else {}
    if "transformer" in state:
        model.load_state_dict(state["transformer"])
    steps, elapsed = state.get("steps", 0), state.get("elapsed", 0.0)
    ema = _Ema(model, cfg.ema, state.get("ema"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=0.01, fused=run.cuda)
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    shift = flow.effective_shift(pipe, tuple(latents.shape))
    guidance = float(CALL_DEFAULTS[cfg.family]["toy"]["guidance_scale"])
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + steps)
    noise_gen = torch.Generator(run.device).manual_seed(cfg.seed * 31 + steps)
    start = time.time() - elapsed
    budget = elapsed + max(run.remaining() - cfg.reserve_minutes * 60.0, 1.0)
    run.log(f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, bank "
            f"{tuple(latents.shape)}, shift {shift:.2f}, budget {budget:.0f}s")
    model.train()
    acc, n_acc, first, t_first = torch.zeros((), device=run.device), 0, steps, time.time()
    run.last_loss = float("nan")
    while time.time() - start < budget and (cfg.max_steps is None or steps < cfg.max_steps):
        if state.get("phase") == "done":
            break
        idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
        pidx = prompt_idx[idx]
        if len(get_spec_by_family(cfg.family).branches) > 1 and cfg.prompt_dropout > 0:
            drop = torch.rand(cfg.batch, generator=gen) < cfg.prompt_dropout
            pidx = torch.where(drop, torch.full_like(pidx, empty_idx), pidx)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(steps, cfg.warmup, (time.time() - start) / budget)
        with run.autocast():
            loss = flow.flow_loss(pipe, latents[idx.to(latents.device)],
                                  flow.index_cond(cond, pidx.to(run.device)), shift, guidance, noise_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(steps)
        steps += 1
        acc += loss.detach().float()
        n_acc += 1
        if steps % cfg.log_every == 0 or steps == first + 1:
            run.last_loss, acc, n_acc = float(acc) / n_acc, torch.zeros_like(acc), 0
            rate = (steps - first) / max(time.time() - t_first, 1e-6)
            run.history["transformer"].append([steps, round(time.time() - start, 1), round(run.last_loss, 5)])
            run.log(f"step {steps} loss {run.last_loss:.4f} lr {opt.param_groups[0]['lr']:.2e} {rate:.2f} it/s")
        if cfg.refresh and cfg.refresh_every and steps % cfg.refresh_every == 0:
            refresh_fn(steps // cfg.refresh_every)
        run.save_ckpt(lambda: _transformer_payload(pipe, model, ema, opt, steps, time.time() - start))
    if n_acc:
        run.last_loss = float(acc) / n_acc
    ema.copy_to()
    model.eval()
    run.steps = steps
    run.save_ckpt(lambda: _transformer_payload(pipe, model, ema, opt, steps, time.time() - start, "done"),
                  force=True)
    run.log(f"transformer done: {steps} steps in {time.time() - start:.0f}s, loss {run.last_loss:.4f}")


def _transformer_payload(pipe, model, ema, opt, steps, elapsed, phase="transformer") -> dict:
    return {"phase": phase, "vae": pipe.vae.state_dict(), "vae_config": dict(pipe.vae.config),
            "transformer": model.state_dict(), "ema": [s.cpu() for s in ema.shadow], "opt": opt.state_dict(),
            "steps": steps, "elapsed": elapsed}


def _prompt_table(cfg: TrainConfig) -> list[str]:
    combos = split_combinations(cfg.kind, "train", cfg.data)
    return [make_prompt(cfg.kind, *c, template=t) for c in combos for t in range(len(TEMPLATES[cfg.kind]))]


def train_toy(cfg: TrainConfig) -> dict:
    """Run every phase within `cfg.minutes`; returns the summary also written to lbdist_eval.json."""
    torch.manual_seed(cfg.seed)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest 3D convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = _Run(cfg)
    pipe = build_pipeline(cfg.family, cfg.size, words=GRAMMAR_WORDS, seed=cfg.seed).to(run.device)
    for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    prompts = _prompt_table(cfg)
    index = {p: i for i, p in enumerate(prompts)}
    pixels, prompt_idx = _render_bank(cfg, cfg.bank, cfg.seed, index)
    run.log(f"bank: {tuple(pixels.shape)} uint8 from {len(prompts)} training prompts")
    run.vae_steps = (run.state or {}).get("vae_steps", 0)
    if run.state and run.state["phase"] in ("transformer", "done"):
        pipe.vae.load_state_dict(run.state["vae"])
        pipe.vae.register_to_config(**{k: v for k, v in run.state["vae_config"].items()
                                       if k in ("latents_mean", "latents_std", "scaling_factor", "shift_factor")})
    else:
        if run.state:
            pipe.vae.load_state_dict(run.state["vae"])
        _train_vae(run, pipe, pixels)
    pipe.vae.eval().requires_grad_(False)
    raw = _encode(run, pipe, pixels)
    if not (run.state and run.state["phase"] in ("transformer", "done")):
        stats = flow.set_latent_stats(pipe, raw)
        run.log(f"latent stats: { {k: np.round(v, 3).tolist() for k, v in stats.items()} }")
    latents = flow.normalise(pipe, raw)
    defaults = call_defaults(cfg)
    cond = flow.encode_text(pipe, prompts + [""], defaults["max_sequence_length"], defaults.get("prompt_template"))

    def refresh(count: int) -> None:
        new_pixels, new_idx = _render_bank(cfg, cfg.refresh, cfg.seed * 1_000_003 + 17 * count + 1, index)
        slots = torch.randperm(len(latents), generator=torch.Generator().manual_seed(count))[:cfg.refresh]
        latents[slots.to(latents.device)] = flow.normalise(pipe, _encode(run, pipe, new_pixels))
        prompt_idx[slots] = new_idx

    _train_transformer(run, pipe, latents, prompt_idx, cond, len(prompts), refresh)
    return _finish(run, pipe, defaults)


def _finish(run: _Run, pipe, defaults: dict) -> dict:
    from .evaluate import evaluate

    cfg = run.cfg
    held = evaluation_prompts(cfg.kind, config=cfg.data)[:cfg.eval_limit]
    calib = calibration_prompts(cfg.kind, 8, config=cfg.data)[:cfg.eval_limit]
    overrides = {"num_inference_steps": cfg.eval_steps} if cfg.eval_steps else {}
    t = time.time()
    vae_score, vae_rmse = _vae_check(run, pipe, "heldout", seed=cfg.seed + 99, n=4 * cfg.vae_check_samples)
    report = evaluate(pipe, held, defaults, seeds=range(cfg.eval_seeds), **overrides)
    train_report = evaluate(pipe, calib, defaults, seeds=(0,), **overrides)
    run.log(f"held-out adherence {report['adherence']:.3f} ({report['n']} samples, {time.time() - t:.0f}s); "
            f"training prompts {train_report['adherence']:.3f}; VAE reconstructions {vae_score:.3f} "
            f"(rmse {vae_rmse:.1f}/255); "
            f"per attribute {report['per_attribute']}")
    summary = {"family": cfg.family, "size": cfg.size, "heldout_adherence": report["adherence"],
               "heldout_per_attribute": report["per_attribute"], "heldout_samples": report["n"],
               "train_prompt_adherence": train_report["adherence"], "vae_reconstruction_adherence": vae_score,
               "vae_reconstruction_rmse": vae_rmse,
               "eval_call": {**defaults, **overrides},
               "latent_stats": {k: pipe.vae.config[k] for k in ("latents_mean", "latents_std", "scaling_factor",
                                                                "shift_factor") if k in pipe.vae.config},
               "vae_steps": run.vae_steps, "transformer_steps": run.steps, "final_loss": run.last_loss,
               "minutes": round((time.time() - run.t0) / 60.0, 2), "device": _device_name(run.device),
               "config": asdict(cfg), "history": run.history,
               "params": {k: sum(p.numel() for p in m.parameters()) for k, m in pipe.components.items()
                          if isinstance(m, torch.nn.Module)},
               "rows": report["rows"]}
    save_pipeline(pipe, cfg.out, defaults, summary, report)
    keys = ("family", "heldout_adherence", "train_prompt_adherence", "vae_reconstruction_adherence", "vae_steps",
            "transformer_steps", "final_loss", "minutes", "device")
    run.log("SUMMARY " + json.dumps({k: summary[k] for k in keys} | {"out": str(cfg.out)}))
    return summary


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def save_pipeline(pipe, out: str | os.PathLike, defaults: dict, summary: dict, report: dict | None = None) -> Path:
    """Write the pipeline (safetensors), its call defaults, eval summary and contact sheet; atomic rename."""
    from .evaluate import contact_sheet

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.parent / f".{out.name}.tmp-{os.getpid()}", out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to("cpu")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "lbdist_defaults.json").write_text(json.dumps(defaults, indent=1) + "\n")
    (tmp / "lbdist_eval.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    if report is not None and report["samples"]:
        n = min(len(report["samples"]), 24)
        try:
            contact_sheet(report["samples"][:n], report["captions"][:n], tmp / "samples.png")
        except ImportError as exc:  # pillow missing: the pipeline matters more than its picture
            print(f"no contact sheet ({exc})", flush=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def quick_config(family: str, out: str, **kw) -> TrainConfig:
    """A few CPU steps at size "tiny" on 32x32 scenes: exercises every phase in seconds (tests)."""
    base = dict(size="tiny", data=QUICK_DATA, minutes=2.0, reserve_minutes=0.5, vae_batch=2, batch=4, bank=16,
                refresh=4, refresh_every=2, max_vae_steps=2, max_steps=3, eval_seeds=1, eval_limit=2, eval_steps=2,
                log_every=1, warmup=1, ckpt_every_s=0.0, vae_check_every=1,
                vae_check_samples=2)
    return replace(TrainConfig(family=family, out=out), **{**base, **kw})
