"""examples/minimal_simclr.py runs as a user runs it, and really trains."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_simclr.py"
TINY = ["--batch-size", "32", "--image-size", "16", "--lr", "16", "--temperature", "0.2", "--seed", "0"]


def _losses(*argv: str) -> list[float]:
    done = subprocess.run([sys.executable, str(EXAMPLE), *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^step (\d+) loss ([\d.]+)$", done.stdout, re.MULTILINE)
    assert [int(step) for step, _ in steps] == list(range(len(steps)))
    return [float(loss) for _, loss in steps]


@pytest.mark.slow
def test_minimal_simclr_lowers_the_loss(tiny_folder: Path) -> None:
    """On the two-class pictures of the tests (each image its own colours), 24 steps take NT-Xent well below its
    start near log(2N - 1): the blocks put together really train (a high lr, as short runs need)."""
    losses = _losses(str(tiny_folder / "train"), "--steps", "24", *TINY)
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.3, losses


@pytest.mark.slow
def test_minimal_simclr_runs_on_the_shipped_sample() -> None:
    assert len(_losses("--steps", "2", *TINY)) == 2


@pytest.mark.slow
def test_minimal_simclr_reads_a_folder_given_on_the_command_line(tiny_folder: Path) -> None:
    assert len(_losses(str(tiny_folder), "--steps", "3", *TINY)) == 3  # 80 images: 2 steps per pass, then a new pass
