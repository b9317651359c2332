"""--time-budget: the duration syntax, the plan against a simulated clock, and real runs on tiny data that end
within 10% of their budget (by their own clock), fresh and resumed, with one-line errors for bad budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchclr import budget as budget_module
from torchclr.budget import TimeBudget, parse_duration
from torchclr.errors import UserError
from torchclr.optim.schedule import warmup_cosine
from torchclr.transforms.resolution import ResolutionSchedule

TINY = ["--batch-size", "8", "--image-size", "16", "--knn-every", "0", "--no-final-report", "--no-progress",
        "--warmup-epochs", "1", "--lr", "0.3", "--seed", "5"]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("600", 600),
                                           ("2.5", 2.5), (" 1.5M ", 90), (45, 45)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "abc", "-5", "-1m", "", "5x", "m", "nan", "inf", "15 m"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(UserError, match="^--time-budget "):
        parse_duration(text)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _simulate(monkeypatch: pytest.MonkeyPatch, seconds: float, step_seconds: dict[int, float], schedule: ResolutionSchedule | None,
              steps_per_epoch: int = 50, epoch_end_seconds: float = 0.0, first_step_seconds: float = 1.0) -> tuple[float, int, float]:
    """Drive a TimeBudget as the training loop does, each step taking its stage's simulated seconds.

    Returns (the seconds used, the steps run, the lr multiplier at the last step)."""
    clock = _FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    plan = TimeBudget(seconds)
    plan.configure(steps_per_epoch=steps_per_epoch, warmup_steps=10, schedule=schedule, device=torch.device("cpu"))
    plan.start(0)
    step, stage, multiplier = 0, 0, 1.0
    while not plan.done(step):
        if schedule is not None and plan.total_steps is not None:
            stage = max(stage, schedule.stage_at(step, plan.total_steps))  # as StagedAugment.set_step keeps it
        clock.now += first_step_seconds if step == 0 else step_seconds[stage]
        multiplier = warmup_cosine(step, plan.total_steps, plan.warmup_steps)  # the lr the loop sets for this step
        step += 1
        plan.after_step(step)
        if step % steps_per_epoch == 0 and not plan.done(step):
            with plan.overhead():
                clock.now += epoch_end_seconds
    return plan.elapsed(), step, multiplier


def test_plan_fills_the_budget_at_a_steady_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    used, steps, last = _simulate(monkeypatch, 100.0, {0: 0.25}, None)
    # 1 s for the first step, then 0.25 s each: 1 + 396 * 0.25 = 100
    assert steps == 397 and used == pytest.approx(100.0)
    assert last < 1e-4  # the cosine ends at the planned last step


def test_plan_prices_later_resolution_stages_and_epoch_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = ResolutionSchedule.parse("16@0,32@0.5")
    # the 32 px stage really costs 3x (not the 4x that the pixel count predicts); epoch ends cost 2 s each
    used, steps, last = _simulate(monkeypatch, 300.0, {0: 0.1, 1: 0.3}, schedule, steps_per_epoch=100, epoch_end_seconds=2.0)
    assert 300.0 - 0.3 - 2.0 <= used <= 300.0  # within one step and one epoch end of the budget, never over
    assert 300 / 0.3 < steps < 300 / 0.1  # more steps than 32 px alone allows: the cheap 16 px stage was priced in
    assert last < 1e-3


def test_a_slower_machine_moves_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned at one rate, the steps then slow down: re-planning still ends the run within the budget."""
    rates = iter([0.1] * 60 + [0.4] * 10_000)
    clock = _FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    plan = TimeBudget(60.0)
    plan.configure(steps_per_epoch=20, warmup_steps=0, schedule=None, device=torch.device("cpu"))
    plan.start(0)
    step = 0
    while not plan.done(step):
        clock.now += next(rates)
        step += 1
        plan.after_step(step)
    assert 60.0 - 2 * 0.4 <= plan.elapsed() <= 60.0 + 0.4 * plan.replan_every


def test_a_resumed_budget_counts_the_time_already_spent() -> None:
    plan = TimeBudget(60.0)
    plan.resume_from({"seconds": 60.0, "spent_s": 45.0, "planned_steps": 300}, "ckpt")
    assert plan.remaining() == pytest.approx(15.0) and plan.planned_steps == 300
    assert not plan.done(300)  # a saved plan shapes the schedule, but only this run's own plans end it
    spent = TimeBudget(60.0)
    spent.resume_from({"seconds": 60.0, "spent_s": 61.0, "planned_steps": 300}, "ckpt")
    with pytest.raises(UserError, match="--time-budget 1m00s was used up before this resume"):
        spent.start(0)
    with pytest.raises(UserError, match="ckpt has a malformed time budget"):
        TimeBudget(60.0).resume_from({"spent_s": "x"}, "ckpt")


def _pretrain(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchclr", "pretrain", "--data", str(data), "--out-dir", str(out), *TINY, *extra],
                          capture_output=True, text=True, timeout=600)


def _budget_record(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "time_budget_used_s" in r][-1]


@pytest.mark.slow
def test_runs_end_within_ten_percent_of_their_budget_fresh_and_resumed(tmp_path: Path, tiny_folder: Path) -> None:
    """The budget counts training (steps, epoch-end checkpoints), by the run's own clock: the process start and the
    setup before the first step are not in it, so the check holds on a busy machine too."""
    out = tmp_path / "budgeted"
    first = _pretrain(tiny_folder, out, "--time-budget", "20s")
    assert first.returncode == 0, first.stderr
    record = _budget_record(out)
    assert abs(record["time_budget_used_s"] - 20) <= 2.0, record
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert lrs[-1] < 0.25 * max(lrs), lrs  # the cosine was fitted to the budget: it has decayed by the end

    resumed = _pretrain(tiny_folder, out, "--time-budget", "40s", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    record = _budget_record(out)
    assert abs(record["time_budget_used_s"] - 40) <= 4.0, record  # 20 s before the resume + about 20 s after it
    assert record["step"] > first_steps(first.stdout)



def first_steps(stdout: str) -> int:
    """The step count from the run's 'time budget: trained N steps' line."""
    line = next(line for line in stdout.splitlines() if line.startswith("time budget: trained"))
    return int(line.split()[3])


@pytest.mark.parametrize("value", ["0", "abc", "-3m"])
def test_bad_budgets_are_one_line_errors(tmp_path: Path, value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "torchclr", "pretrain", f"--time-budget={value}", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--time-budget" in lines[0] and repr(value) in lines[0], result.stderr


@pytest.mark.slow
def test_a_budget_too_short_for_one_step(tmp_path: Path, tiny_folder: Path) -> None:
    result = _pretrain(tiny_folder, tmp_path / "short", "--time-budget", "0.001")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "--time-budget 0.001s is too short for one step" in lines[0], lines


@pytest.mark.parametrize("every, position, complete, done, due", [
    (10, (9, 0, 970), True, False, True),     # the 10th complete epoch
    (10, (10, 0, 1067), True, False, False),  # the 11th
    (10, (162, 17, 15731), False, True, True),  # a time budget ends mid-epoch 163: the final kNN is logged
    (10, (12, 5, 1169), False, False, False),  # an interrupted (not finished) epoch
    (0, (162, 17, 15731), False, True, False),  # --knn-every 0: never
])
def test_the_monitor_runs_every_n_epochs_and_after_the_last_step(every: int, position: tuple[int, int, int],
                                                                 complete: bool, done: bool, due: bool) -> None:
    from types import SimpleNamespace

    from torchclr.train import Position, Pretraining

    job = SimpleNamespace(monitor_every=every, length=SimpleNamespace(done=lambda step: done))
    assert Pretraining.monitor_due(job, Position(*position), complete=complete) is due  # type: ignore[arg-type]
