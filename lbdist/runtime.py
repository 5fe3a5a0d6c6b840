"""Process-wide defaults that lbdist's entry points (CLI commands, jobs) set once at start: CPU threads.

On the CPU, torch starts one intra-op thread per core in every process. lbdist's CPU work is small
matrices (tiny/toy models, one final block during calibration) and often several processes at once (pytest
workers, Ray actors), where those threads mostly wait on each other: on 2-core machines a small
calibration took 83-109 s with torch's default threads and 8-9 s with one thread per process, with
identical output. So on the CPU lbdist uses one intra-op thread per process by default.

Override it with `LBDIST_NUM_THREADS=<n>` (any device), or by setting `OMP_NUM_THREADS` / `MKL_NUM_THREADS`
yourself, which torch already honours and lbdist then leaves alone. On a GPU the default is left as torch
set it. Library calls (`enable_bridge`, `calibrate`, ...) never change threads; only `default_threads`
does, and only when an entry point calls it.
"""
from __future__ import annotations

import os

ENV = "LBDIST_NUM_THREADS"
USER_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads(device: str | None = "cpu", environ: dict | None = None) -> int:
    """Set torch's intra-op threads for this process as described in the module docstring; returns the count
    in effect.

    Args:
        device: where the work runs ("cpu", "cuda", "cuda:1", ...; None or "auto": cuda if available).
        environ: the environment to read (default `os.environ`).
    Raises ValueError if `LBDIST_NUM_THREADS` is not an integer >= 1.
    """
    import torch

    environ = os.environ if environ is None else environ
    text = environ.get(ENV, "").strip()
    if text:
        try:
            threads = int(text)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{ENV}={environ[ENV]!r}: must be an integer >= 1 (intra-op threads per process)")
        torch.set_num_threads(threads)
        return threads
    if any(environ.get(name, "").strip() for name in USER_ENVS):
        return torch.get_num_threads()
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cpu"):
        torch.set_num_threads(1)
    return torch.get_num_threads()
