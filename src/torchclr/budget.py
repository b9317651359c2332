"""`--time-budget`: a run that ends when the user's patience does, with its lr schedule fitted to that length.

The run times its own steps and plans how many more fit in what is left of the budget. It plans first after
a few steps (the very first one carries one-time costs and is not counted) and again at fixed steps after that,
so a machine that gets busier, an epoch-end checkpoint or monitor, or a resolution stage that costs more per
step moves the end: the warm-up + cosine schedule is re-targeted to the planned length each time, so it keeps
its shape and reaches 0 at the last step. Rank 0 plans and every process takes its plan (one small collective
at the planning steps), so all stop at the same step.

The budget counts training: from the first step to the last, with the epoch-end checkpoints and kNN monitors
between them. The setup before (reading the data, the memory plan) and the final report after (linear probe)
are not in it; the run prints both. A resumed run has what is left: the budget minus the time its checkpoint
says was already spent.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from torchclr.errors import UserError

if TYPE_CHECKING:
    import torch

    from torchclr.transforms.resolution import ResolutionSchedule

# torch is imported where it is used, so that checking the option while reading a config does not load it.

OPTION = "--time-budget"
FIRST_PLAN_STEP = 3  # plan after this step; the first step (allocations, kernel selection) is not timed
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int, option: str = OPTION) -> float:
    """Seconds in '90s', '15m', '2h', '1h30m' or plain seconds ('600', '2.5'); a one-line error otherwise."""
    value = str(text).strip().lower()
    parts = re.fullmatch(r"((\d+(\.\d*)?|\.\d+)([smh]))+", value)
    if parts:
        seconds = sum(float(number) * _UNITS[unit] for number, _, unit in re.findall(r"(\d+(\.\d*)?|\.\d+)([smh])", value))
    else:
        try:
            seconds = float(value)
        except ValueError:
            raise UserError(f"{option} must be a duration such as 90s, 15m, 2h or a number of seconds, got {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{option} must be a duration > 0 (such as 90s, 15m, 2h), got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """'12.3s' under a minute, '15m00s' above."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


@dataclass
class _StageClock:
    """Seconds and steps spent in one resolution stage (overheads excluded)."""

    seconds: float = 0.0
    steps: int = 0


def _single_stage(step: int, total: int) -> int:
    return 0


def _same_cost(stage: int) -> float:
    return 1.0


@dataclass
class TimeBudget:
    """A `torchclr.length.RunLength` that ends when the budget does: `configure` it once the data exist, `start`
    it before the first step, tell it `after_step`, and wrap the work between steps in `overhead()`.

    Until its first plan the schedule's length is unknown (`total_steps` None: warm-up, then the peak lr); from
    then on it is the planned step count. `stage_at(step, total)`: the resolution stage of a step in a run of
    `total` steps; `step_cost(stage)`: a step's relative cost, used for stages not yet timed.
    """

    seconds: float
    spent_before: float = 0.0
    started: float | None = None
    planned_steps: int | None = None
    steps_per_epoch: int = 1
    warmup_asked: int = 0
    replan_every: int = 1
    stage_at: Callable[[int, int], int] = _single_stage
    step_cost: Callable[[int], float] = _same_cost
    device: torch.device | None = None
    epochs: None = None  # as many as fit
    first_step: int = 0
    _planned_here: bool = False  # a plan from a checkpoint sets the schedule, but only this run's plans stop it
    _clock: dict[int, _StageClock] = field(default_factory=dict)
    _last_mark: float | None = None
    _epoch_end_seconds: list[float] = field(default_factory=list)

    def configure(self, *, steps_per_epoch: int, warmup_steps: int, schedule: ResolutionSchedule | None,
                  device: torch.device) -> None:
        """The run's shape: its warm-up, the epoch length, the resolution stages and the device to time."""
        self.steps_per_epoch, self.warmup_asked, self.device = steps_per_epoch, warmup_steps, device
        self.replan_every = max(1, steps_per_epoch // 10)
        if schedule is not None:
            self.stage_at, self.step_cost = schedule.stage_at, schedule.step_cost

    @property
    def total_steps(self) -> int | None:
        return self.planned_steps

    @property
    def warmup_steps(self) -> int:
        """The warm-up asked for, but at most half the planned run."""
        return self.warmup_asked if self.planned_steps is None else min(self.warmup_asked, self.planned_steps // 2)

    def resume_from(self, saved: Any, where: str) -> None:
        """Take the time spent and the plan from a checkpoint's `budget` entry (none: a run without a budget)."""
        if saved is None:
            return
        try:
            self.spent_before = float(saved["spent_s"])
            self.planned_steps = None if saved["planned_steps"] is None else int(saved["planned_steps"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"checkpoint {where} has a malformed time budget entry: {str(saved)[:80]}") from None

    def elapsed(self) -> float:
        """Seconds of the budget used so far, earlier runs of a resumed one included."""
        return self.spent_before + (0.0 if self.started is None else time.perf_counter() - self.started)

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def start(self, step: int) -> None:
        """Start the clock, just before the first step (`step` done before it); a resumed run must have some of its
        budget left."""
        self.first_step = step
        if self.remaining() <= 0:
            raise UserError(f"{OPTION} {format_duration(self.seconds)} was used up before this resume "
                            f"({format_duration(self.spent_before)} spent); give a larger budget to train on")
        self.started = self._last_mark = time.perf_counter()

    @contextmanager
    def overhead(self) -> Iterator[None]:
        """Work between steps (epoch-end monitor and checkpoint): timed apart from the steps, reserved for at the end."""
        start = time.perf_counter()
        yield
        self._epoch_end_seconds.append(time.perf_counter() - start)
        self._last_mark = time.perf_counter()

    def after_step(self, global_step: int) -> None:
        """Time the step just done; at the planning steps, plan (rank 0) and agree (all ranks)."""
        import torch

        from torchclr import distributed

        steps_here = global_step - self.first_step
        if steps_here == 1 and distributed.all_gather_objects(self.remaining() <= 0)[0]:  # rank 0's verdict for all
            raise UserError(f"{OPTION} {format_duration(self.seconds)} is too short for one step: the first step "
                            f"took {format_duration(self.elapsed() - self.spent_before)}; give a larger budget")
        planning = steps_here >= FIRST_PLAN_STEP and (steps_here == FIRST_PLAN_STEP or steps_here % self.replan_every == 0
                                                     or _power_of_two(steps_here))
        if planning and self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # time what the device did, not what the host queued
        now = time.perf_counter()
        last_step = now - (self._last_mark if self._last_mark is not None else now)
        if steps_here > 1:  # the first step's one-time costs stay out of the rate
            clock = self._clock.setdefault(self.stage_at(global_step - 1, self.planned_steps or global_step), _StageClock())
            clock.seconds += last_step
            clock.steps += 1
        self._last_mark = now
        if not planning and steps_here < FIRST_PLAN_STEP:
            # before the first plan, stop if another step like the last one would not fit (slow steps, small budget)
            planning = distributed.all_gather_objects(self.remaining() < last_step)[0]
        if planning:
            self.planned_steps = distributed.all_gather_objects(self._plan(global_step))[0]
            self._planned_here = True

    def done(self, global_step: int) -> bool:
        return self._planned_here and self.planned_steps is not None and global_step >= self.planned_steps

    def _seconds_per_step(self, stage: int) -> float:
        """Measured for a stage already timed, else scaled from a timed one by the stages' relative costs."""
        clock = self._clock.get(stage)
        if clock is not None and clock.steps:
            return clock.seconds / clock.steps
        timed = [(s, c) for s, c in self._clock.items() if c.steps]
        if not timed:
            return math.inf
        reference, reference_clock = max(timed, key=lambda item: item[1].steps)
        return reference_clock.seconds / reference_clock.steps * self.step_cost(stage) / self.step_cost(reference)

    def _future_seconds(self, done: int, total: int) -> float:
        """Seconds the steps done+1..total take, each at its stage's rate, plus the epoch ends among them."""
        seconds, step = 0.0, done
        while step < total:  # walk stage by stage
            stage = self.stage_at(step, total)
            end = _next_boundary(self.stage_at, step, total, stage)
            seconds += (end - step) * self._seconds_per_step(stage)
            step = end
        epoch_ends = total // self.steps_per_epoch - done // self.steps_per_epoch + 1  # +1: the run's own end
        per_end = sum(self._epoch_end_seconds) / len(self._epoch_end_seconds) if self._epoch_end_seconds else 0.0
        return seconds + epoch_ends * per_end

    def _plan(self, done: int) -> int:
        """The largest step count whose remaining steps fit in what is left (at least the steps done)."""
        left = self.remaining()
        if self._future_seconds(done, done + 1) > left:
            return done
        low, high = done + 1, done + 2
        while self._future_seconds(done, high) <= left:
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self._future_seconds(done, middle) <= left else (low, middle)
        return low

    def state(self) -> dict[str, float | int | None]:
        """What a checkpoint keeps: the time spent and the plan so far."""
        return {"seconds": self.seconds, "spent_s": self.elapsed(), "planned_steps": self.planned_steps}

    def report(self) -> dict[str, float]:
        """For metrics.jsonl, at the end of training."""
        return {"time_budget_s": self.seconds, "time_budget_used_s": round(self.elapsed(), 3)}

    def summary(self, global_step: int) -> str:
        return (f"time budget: trained {global_step} steps in {format_duration(self.elapsed())} of "
                f"{format_duration(self.seconds)} (checkpoints and monitor included; setup and the final report are not)")


def _power_of_two(value: int) -> bool:
    return value & (value - 1) == 0


def _next_boundary(stage_at: Callable[[int, int], int], start: int, total: int, stage: int) -> int:
    """The first step after `start` (of stage `stage`) whose stage differs, or `total`: a binary search, since
    stages only move forward with the step."""
    low, high = start, total
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if stage_at(middle, total) == stage else (low, middle)
    return high
