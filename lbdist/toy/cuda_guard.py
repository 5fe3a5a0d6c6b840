"""Attention-backend guard for toy training on CUDA, and a probe of the FLUX bf16-backward crash.

The crash (issue 14, tools/results/toy_train_h100x4.json): training the FLUX toy on an H100 and an H200 died
in its first bf16 backward with `CUBLAS_STATUS_EXECUTION_FAILED` in `cublasGemmEx`, twice, with the same
trainer that ran Wan and HunyuanVideo. A previous attempt attributed it to the cuDNN scaled-dot-product-
attention backward in bf16 (an asynchronous kernel error that surfaces at the next cuBLAS call); FLUX is
the one toy whose attention has no mask, so on Hopper torch may pick cuDNN attention for it and not for
HunyuanVideo (masked). NOT VERIFIED: no GPU was available when this guard was written.

- `sdpa_context(family, device, choice)`: "auto" (default) restricts FLUX training on CUDA to the flash and
  math backends (no cuDNN, no mem-efficient) and leaves the other families and the CPU alone; "default" is
  torch's own choice; "math", "flash", "efficient", "cudnn" allow that backend alone.
- `python -m lbdist.toy.cuda_guard --size toy` (on the GPU machine) runs a few FLUX bf16 training steps under
  each setting of `PROBES`, each in its own process (a CUDA error poisons its context), and prints one JSON
  line per setting with ok / the error's last line: which backend, dtype or batch shape triggers the crash.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import nullcontext

import torch

SDPA_CHOICES = ("auto", "default", "math", "flash", "efficient", "cudnn")
PROBES = {  # setting -> (sdpa choice, bf16 autocast, batch, extra environment)
    "default": ("default", True, 256, {}),
    "default_blocking": ("default", True, 256, {"CUDA_LAUNCH_BLOCKING": "1"}),
    "cudnn": ("cudnn", True, 256, {}),
    "efficient": ("efficient", True, 256, {}),
    "flash": ("flash", True, 256, {}),
    "math": ("math", True, 256, {}),
    "auto": ("auto", True, 256, {}),
    "fp32": ("default", False, 256, {}),
    "default_batch64": ("default", True, 64, {}),
}


def sdpa_context(family: str, device: torch.device | str, choice: str = "auto"):
    """A context manager restricting torch's SDPA backends for a training step (see the module docstring)."""
    if choice not in SDPA_CHOICES:
        raise ValueError(f"sdpa={choice!r}: must be one of {SDPA_CHOICES}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..models import get_spec_by_family

    device = torch.device(device)
    named = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    spec = get_spec_by_family(family)
    auto = tuple(spec.toy.train_sdpa) if spec.toy is not None else ()
    if choice == "default" or device.type != "cuda" or (choice == "auto" and not auto):
        return nullcontext()
    return sdpa_kernel([named[name] for name in (auto if choice == "auto" else (choice,))])


def probe_one(setting: str, size: str, steps: int = 3) -> None:
    """A few FLUX training steps (forward, backward, AdamW) under `setting`, synchronised; raises on error."""
    from . import flow
    from .build import CALL_DEFAULTS, build_pipeline
    from .dataset import grammar_words
    from .dataset_v2 import PROMPT_TOKENS_V2

    choice, bf16, batch, _ = PROBES[setting]
    device = torch.device("cuda")
    pipe = build_pipeline("flux", size, words=grammar_words("v2")).to(device)
    prompts = ["a small red circle at the left on a plain black background"] * batch
    cond = flow.encode_text(pipe, prompts, PROMPT_TOKENS_V2)
    latents = torch.randn(batch, pipe.transformer.config.in_channels // 4, 16, 16, device=device)
    opt = torch.optim.AdamW(pipe.transformer.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator(device).manual_seed(0)
    guidance = CALL_DEFAULTS["flux"][size]["guidance_scale"]
    pipe.transformer.train()
    for _ in range(steps):
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
        with sdpa_context("flux", device, choice), amp:
            loss = flow.flow_loss(pipe, latents, cond, 3.0, guidance, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    torch.cuda.synchronize()


def probe(size: str, timeout: float = 300.0) -> dict:
    """Run every setting of `PROBES` in its own process; returns setting -> "ok" or the error's last line."""
    results = {}
    for setting, (_, _, _, env) in PROBES.items():
        cmd = [sys.executable, "-m", "lbdist.toy.cuda_guard", "--one", setting, "--size", size]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
            lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
            results[setting] = "ok" if done.returncode == 0 else (lines[-1] if lines else f"exit {done.returncode}")
        except subprocess.TimeoutExpired:
            results[setting] = f"timeout after {timeout:.0f}s"
        print(json.dumps({"setting": setting, "result": results[setting]}), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="probe the FLUX toy's bf16 backward under several settings")
    parser.add_argument("--size", default="toy", help='transformer size ("toy" crashed in issue 14; "deep")')
    parser.add_argument("--one", choices=tuple(PROBES), help="run one setting in this process")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the probe is for the GPU machine", file=sys.stderr)
        return 2
    if args.one:
        probe_one(args.one, args.size)
        print("ok")
        return 0
    probe(args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
