"""Stopping on a signal: SIGINT (Ctrl-C), SIGTERM (kill, Kubernetes, torchrun) or SIGUSR1 (Slurm's
warning before preemption) asks the loop to finish the step, checkpoint and stop; a second Ctrl-C
stops at once, unsaved."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

# SIGUSR1 does not exist on Windows.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class StopSignals:
    """`received` is the first stop signal this process got while `installed()` was active."""

    def __init__(self, info: Callable[[str], None]):
        self.info = info
        self.received: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            self.info(
                f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                "(Ctrl-C again to stop at once, without one)"
            )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {}
        try:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
