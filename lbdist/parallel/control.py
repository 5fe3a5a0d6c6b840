"""`GenerationControl`: the small Ray actor between a driver and a worker group's rank 0 during one generation.

Rank 0 reports progress to it after every step (fire and forget) and reads the cancel flag at every step boundary
(then broadcasts the decision to its peers); the driver polls `status()` and sets `cancel()`. Plain class: the
caller makes it remote (`ray.remote(GenerationControl)`), so importing this module starts nothing.
"""
from __future__ import annotations

import time


class GenerationControl:
    def __init__(self):
        self.done, self.total, self._cancel, self.updated = 0, 0, False, time.time()

    def progress(self, done: int, total: int) -> None:
        self.done, self.total, self.updated = done, total, time.time()

    def cancel(self) -> None:
        self._cancel = True

    def cancelled(self) -> bool:
        return self._cancel

    def status(self) -> tuple[int, int, bool]:
        return self.done, self.total, self._cancel
