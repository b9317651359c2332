"""SIGTERM and SIGUSR1 (what schedulers send before pre-emption) become a checkpoint at the current step.

The handler only sets a flag; the training loop reads it after each step, saves, and raises `Interrupted`,
which the command line turns into one line saying how to continue. Kept free of torch so the CLI imports it
cheaply.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(Exception):
    """The run stopped on a signal after saving its state; `exit_code` is 128 + the signal number, as a shell reports."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class StopSignals:
    """Context manager: while inside, SIGTERM/SIGUSR1 set `received` instead of ending the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Restore the handlers; a signal that came too late for the loop to act on (the run was ending) is passed
        on to the handler that was there before when that is Python's (`torchclr ablate`'s stops between cells),
        rather than lost."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if exc_type is None and self.received is not None and callable(previous.get(self.received)):
            signal.raise_signal(self.received)

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""
