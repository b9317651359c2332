"""One run folder, one writer: a second `pretrain` on a busy --out-dir is refused in one line (two real processes),
and `--resume` onto other data or onto a finished run says what it does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_bad_inputs import _one_line_error
from torchclr.runlog import RUN_LOCK

TINY = ["--batch-size", "4", "--image-size", "8", "--knn-every", "0", "--warmup-epochs", "0", "--no-progress",
        "--precision", "fp32", "--no-final-report", "--seed", "7"]


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _pretrain(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torchclr", "pretrain", "--data", str(data), "--out-dir", str(out), *TINY, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_pretrain_on_a_busy_out_dir_is_refused_in_one_line(tmp_path: Path) -> None:
    data, out = _images(tmp_path / "d", 8), tmp_path / "run"
    first = _pretrain(data, out, "--epochs", "1000")
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()
    assert (out / RUN_LOCK).read_text() == str(first.pid)
    # --overwrite is the dangerous case: it would delete the running run's files
    second = subprocess.run([sys.executable, "-m", "torchclr", "pretrain", "--data", str(data), "--out-dir", str(out),
                             *TINY, "--epochs", "1", "--overwrite"], capture_output=True, text=True, timeout=300)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0] == (f"torchclr: error: --out-dir {out} is being written by another torchclr pretrain (pid {first.pid}, "
                        f"lock {out / RUN_LOCK}); wait for it, or give another --out-dir")
    assert first.poll() is None and (out / "metrics.jsonl").exists()  # the first run is untouched and goes on
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 128 + signal.SIGTERM
    assert "Traceback" not in first.stderr.read() and not (out / RUN_LOCK).exists()  # released on the way out
    resumed = _pretrain(data, out, "--epochs", "1", "--resume")  # the folder is free again
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()


def test_a_run_folder_lock_of_a_live_process_refuses_pretrain_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os

    data, out = _images(tmp_path / "d", 8), tmp_path / "run"
    out.mkdir()
    (out / RUN_LOCK).write_text(str(os.getppid()))  # a live process holds it
    line = _one_line_error(["pretrain", "--data", str(data), "--out-dir", str(out), *TINY, "--epochs", "1"], capsys)
    assert f"is being written by another torchclr pretrain (pid {os.getppid()}" in line
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK]  # nothing written, the holder's lock kept
