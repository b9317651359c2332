"""Fault injection: a real `torchclr pretrain` is SIGKILLed and SIGTERMed at random steps (and random moments
inside them, checkpoint writes included) and resumed each time; the result must equal an uninterrupted run bit
for bit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchclr import checkpoint

STEPS_PER_EPOCH, EPOCHS = 4, 4
ARGS = ["--epochs", str(EPOCHS), "--batch-size", "4", "--image-size", "8", "--knn-every", "0", "--warmup-epochs", "0",
        "--no-progress", "--deterministic", "--precision", "fp32", "--save-every-steps", "3", "--keep-checkpoints", "1",
        "--lr", "0.5", "--seed", "7"]


@pytest.fixture(scope="module")
def sixteen_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sixteen")
    rng = np.random.default_rng(0)
    for i in range(4 * STEPS_PER_EPOCH):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torchclr", "pretrain", "--data", str(data), "--out-dir", str(out), *ARGS, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _resumable_step(out: Path) -> int:
    """The global step the latest checkpoint holds (0 when none yet)."""
    names = [p.name for p in (out / "checkpoints").glob("epoch-*.safetensors")] if (out / "checkpoints").exists() else []
    steps = [int(m.group(2)) if m.group(2) else int(m.group(1)) * STEPS_PER_EPOCH
             for m in (re.match(r"epoch-(\d+)(?:-step-(\d+))?\.safetensors", n) for n in names) if m]
    return max(steps, default=0)


def _logged(out: Path) -> list[tuple[str, int]]:
    """(line, step) of metrics.jsonl, without a line cut short by SIGKILL."""
    path = out / "metrics.jsonl"
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            found.append((line, json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass
    return found


def _forget_steps_after(out: Path, step: int) -> None:
    """Drop log lines past the checkpoint, as the resumed run itself does, so that the lines this test waits
    for are the new process's own (else it could signal the process before its handlers are in place)."""
    path = out / "metrics.jsonl"
    if path.exists():
        path.write_text("".join(line + "\n" for line, logged in _logged(out) if logged <= step))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)[0]


@pytest.mark.slow
def test_killed_and_terminated_runs_resume_to_identical_weights(sixteen_images: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _start(sixteen_images, reference).wait(timeout=600) == 0

    rng = np.random.default_rng(int(os.environ.get("TORCHCLR_FAULT_SEED", "0")))
    out, delivered = tmp_path / "interrupted", {"SIGKILL": 0, "SIGTERM": 0}
    for attempt in range(10):
        kind = (signal.SIGKILL, signal.SIGTERM)[attempt % 2]
        start = _resumable_step(out)
        _forget_steps_after(out, start)
        process = _start(sixteen_images, out, *(["--resume"] if start else ["--overwrite"]))  # nothing saved yet: afresh
        target = start + 1
        deadline = time.monotonic() + 300
        while max((step for _, step in _logged(out)), default=0) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0, 0.4)))  # anywhere in a step, a log line or a checkpoint write
        assert process.poll() is None, f"the run ended before interruption {attempt + 1}: {process.stderr.read()}"
        process.send_signal(kind)
        code = process.wait(timeout=300)
        err = process.stderr.read()
        assert "Traceback" not in err, err
        if kind == signal.SIGTERM:
            last = err.strip().splitlines()[-1]
            assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in last and "--resume" in last, err
            assert _resumable_step(out) >= target  # saved at the step it reached, not at the last periodic save
        else:
            assert code == -signal.SIGKILL
        delivered[kind.name] += 1
    final = _start(sixteen_images, out, "--resume")
    assert final.wait(timeout=600) == 0, final.stderr.read()

    assert delivered == {"SIGKILL": 5, "SIGTERM": 5}
    assert not list((out / "checkpoints").glob(".*.tmp"))  # temporaries of killed writes were cleaned up
    expected, got = _tensors(reference / "encoder.safetensors"), _tensors(out / "encoder.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], got[k])]
    last = f"epoch-{EPOCHS:04d}.safetensors"
    expected, got = _tensors(reference / "checkpoints" / last), _tensors(out / "checkpoints" / last)
    assert all(torch.equal(expected[k], got[k]) for k in expected if k.startswith(("model.", "optimizer.")))
