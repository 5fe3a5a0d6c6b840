"""Helpers shared by the tests: tiny real diffusers pipelines of each family, built in code (no downloads).

Imported as `from helpers import ...` (pytest puts tests/ on sys.path), so both `pytest` and `python -m pytest`
collect the suite.
"""
from __future__ import annotations

import torch

FAMILIES = ("wan", "hunyuan_video", "flux")
WORDS = "red green blue yellow circle square triangle left right up down".split()


def make_pipe(family: str, **overrides):
    from lbdist.toy.build import build_pipeline

    return build_pipeline(family, "tiny", words=WORDS, seed=0, **overrides)


def call_kwargs(family: str, steps: int, **extra) -> dict:
    from lbdist.toy.build import call_defaults

    return {**call_defaults(family, "tiny"), "num_inference_steps": steps, "output_type": "latent", **extra}


def generate(pipe, family: str, prompt: str = "a red circle", steps: int = 10, seed: int = 0, **extra):
    out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **call_kwargs(family, steps, **extra))
    return out.frames if hasattr(out, "frames") else out.images
