"""What a user sees in `ray job logs`, and the stop request a SIGTERM turns into.

The driver prints one line per event, `[calibrate <run id>] <stage> | ...`, flushed at once:

    [calibrate <run id>] <elapsed> <stage> | ...   (stages: plan, record, train, done / stopped / failed)

(`README.md`, "Calibrate on a cluster", shows a real log.)

Training workers report to a `Board` actor (rank 0 of each trainer, once per epoch), which the driver polls. A
SIGTERM to the job (`ray job stop`) sets the board's stop flag: every trainer's rank 0 sees it within one
backward pass (`StopPoller`, broadcast so all ranks stop together), writes a checkpoint and returns, and the
job exits 1 saying how to resume. Ray's grace period before SIGKILL is `RAY_JOB_STOP_WAIT_TIME_S` on the head
(3 s by default; set it above one checkpoint's time for real models).
"""
from __future__ import annotations

import signal
import sys
import threading
import time


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 400 characters (what a failed job prints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress lines of one run (to stdout by default, flushed: `ray job logs` shows them as they happen)."""

    def __init__(self, run_id: str, out=None):
        self.prefix = f"[calibrate {run_id}]"
        self.out = out
        self.started = time.monotonic()
        self.lines: list[str] = []

    def line(self, stage: str, text: str) -> None:
        message = f"{self.prefix} {self.elapsed():>6} {stage} | {text}"
        self.lines.append(message)
        if self.out is not None:
            self.out(message)
        else:
            print(message, flush=True)

    def elapsed(self) -> str:
        return fmt_seconds(time.monotonic() - self.started)


class Board:
    """A small Ray actor between the driver and the training workers: progress in, stop requests out."""

    def __init__(self):
        self.groups: dict[int, dict] = {}
        self.stop = False
        self.version = 0

    def report(self, group: int, values: dict) -> None:
        self.groups[group] = dict(values)
        self.version += 1

    def snapshot(self) -> tuple[int, dict]:
        return self.version, dict(self.groups)

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop


def new_board():
    import ray

    return ray.remote(num_cpus=0)(Board).remote()


class StopPoller:
    """`poller()` -> whether to stop now, the same answer on every rank (rank 0 asks the board without
    blocking, then broadcasts). Collective: every rank calls it at the same points."""

    def __init__(self, board, rank: int, world: int, device):
        self.board, self.rank, self.world, self.device = board, rank, world, device
        self.pending = None
        self.stopping = False

    def _ask(self) -> bool:
        import ray

        if self.board is None or self.stopping:
            return self.stopping
        if self.pending is None:
            self.pending = self.board.stop_requested.remote()
        ready, _ = ray.wait([self.pending], timeout=0)
        if ready:
            self.stopping = bool(ray.get(self.pending))
            self.pending = None
        return self.stopping

    def __call__(self) -> bool:
        import torch

        flag = torch.tensor([int(self._ask()) if self.rank == 0 else 0], device=self.device)
        if self.world > 1:
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())


class StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the driver's stages poll; `board` is told too once it exists."""

    def __init__(self):
        self.event = threading.Event()
        self.board = None
        self.signal: str | None = None

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signal.Signals(signum).name
        print(f"received {self.signal}: stopping at the next safe point (checkpoint, then exit)", file=sys.stderr,
              flush=True)
        self.event.set()
        if self.board is not None:
            self.board.request_stop.remote()

    def attach(self, board) -> None:
        self.board = board
        if self.event.is_set():
            board.request_stop.remote()

    def __call__(self) -> bool:
        return self.event.is_set()
