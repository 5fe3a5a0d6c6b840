"""Progress of a batch: items done / total, rate and ETA, as log lines (for `ray job logs`) and a tqdm bar on a
terminal."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("lbdist.render")


def eta_text(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts finished items; logs `done/total, failed, rate, ETA` at most every `log_every_s` and at the end.

    The rate is items over wall time since the batch started (actor start-up included, which is what a user
    waits for); the ETA is the remaining items at that rate.
    """

    def __init__(self, total: int, *, log_every_s: float = 30.0, bar: bool | None = None):
        self.total, self.done, self.failed = total, 0, 0
        self.log_every_s = log_every_s
        self.started = self.last_log = time.monotonic()
        if bar is None:
            bar = sys.stderr.isatty()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="item", desc="rendering")

    def rate(self) -> float:
        """Items per second so far."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"{self.done}/{self.total} items ({self.failed} failed) | {rate * 3600:.1f} items/h | "
                f"ETA {eta_text(eta)}")

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if self.bar is not None:
            self.bar.update(1)
            if self.failed:
                self.bar.set_postfix(failed=self.failed)
        now = time.monotonic()
        if now - self.last_log >= self.log_every_s or self.done == self.total:
            log.info("progress: %s", self.line())
            self.last_log = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
