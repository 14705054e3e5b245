"""A run's clocks: its wall time over all resumes, the part of it spent training (held-out
evaluations left out, so train.max_minutes gives runs that evaluate at different rates the same
training time), and the time since the last checkpoint (train.checkpoint_minutes)."""

from __future__ import annotations

import time


class RunClock:
    """Seconds of this launch on top of `wall_offset`, the wall time of the launches before it."""

    def __init__(self, wall_offset: float = 0.0, eval_seconds: float = 0.0):
        self.wall_offset = wall_offset
        self.eval_seconds = eval_seconds  # held-out evaluation time, over all launches
        self.started = self.last_checkpoint = time.perf_counter()

    def start(self) -> None:
        """Training begins now: what came before (building, decoding, restoring) does not count."""
        self.started = self.last_checkpoint = time.perf_counter()

    def wall(self) -> float:
        return self.wall_offset + (time.perf_counter() - self.started)

    def train_seconds(self) -> float:
        return self.wall() - self.eval_seconds

    def since_checkpoint(self) -> float:
        return time.perf_counter() - self.last_checkpoint

    def checkpointed(self) -> None:
        self.last_checkpoint = time.perf_counter()
