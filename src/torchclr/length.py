"""How long a pretraining runs: a fixed number of epochs, or a time budget (`torchclr.budget.TimeBudget`).

The training loop asks a run length three things: the length of the lr schedule (`total_steps`, `warmup_steps`:
the learning rate is `warmup_cosine(step, total_steps, warmup_steps)`), whether the run is `done` after a step,
and its `state()` for a checkpoint. It tells it about every step (`after_step`) and wraps the work between
steps in `overhead()`. A time budget differs from a fixed run only in how it answers; the loop has one stopping
check for both.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from torchclr.errors import UserError


class RunLength(Protocol):
    steps_per_epoch: int

    @property
    def total_steps(self) -> int | None:
        """The schedule's length in steps; None while a time budget has not yet planned it."""

    @property
    def warmup_steps(self) -> int: ...

    @property
    def epochs(self) -> int | None:
        """The number of epochs, if fixed (for the progress line)."""

    def start(self, step: int) -> None:
        """Just before this process's first step (`step` steps were done before it, by a resumed run)."""

    def after_step(self, step: int) -> None: ...

    def done(self, step: int) -> bool: ...

    def overhead(self) -> AbstractContextManager[None]:
        """Wraps the epoch-end work (monitor, checkpoint) between steps."""

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps to resume the same length (None: nothing to keep)."""


class FixedEpochs:
    """`--epochs` passes over the data: the schedule spans them all."""

    def __init__(self, *, epochs: int, steps_per_epoch: int, warmup_steps: int) -> None:
        self.epochs, self.steps_per_epoch, self._warmup = epochs, steps_per_epoch, warmup_steps
        total = epochs * steps_per_epoch
        if total <= 0:
            raise UserError(f"the run has no optimisation steps ({total}): check epochs and that the data fill a batch")
        if not 0 <= warmup_steps <= total:
            raise UserError(f"--warmup-epochs give {warmup_steps} warm-up steps, more than the run's {total} steps")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return self._warmup

    def start(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def done(self, step: int) -> bool:
        return step >= self.total_steps

    def overhead(self) -> AbstractContextManager[None]:
        return nullcontext()

    def state(self) -> None:
        return None
