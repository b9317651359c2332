"""One run folder, one writer: a second `pretrain` on a busy --out-dir is refused in one line (two real processes),
and `--resume` onto other data or onto a finished run says what it does."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_bad_inputs import _one_line_error
from torchclr.cli import main
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
    assert (out / RUN_LOCK).read_text().split()[0] == str(first.pid)
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


# ---- --resume onto other data, or onto a finished run ----

def _run(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", str(data), "--out-dir", str(out), *TINY, *extra])


def _files(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished one-epoch run on 8 images, and its data."""
    root = tmp_path_factory.mktemp("finished")
    data = _images(root / "d", 8)
    assert _run(data, root / "run", "--epochs", "1") == 0
    return data, root / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize("other", ["more images", "as many, other names"])
def test_resume_onto_other_data_is_refused_in_one_line(other: str, finished_run: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    _, run = finished_run
    out = _copy(run, tmp_path)
    data = _images(tmp_path / "other", 12) if other == "more images" else _images(tmp_path / "other", 8, seed=1)
    if other != "more images":
        for path in data.iterdir():
            path.rename(path.with_name("x" + path.name))
    before = _files(out)
    line = _one_line_error(["pretrain", "--data", str(data), "--out-dir", str(out), *TINY, "--epochs", "2", "--resume"], capsys)
    assert f"--data {data} is not the data checkpoint {out / 'checkpoints'}" in line and "--resume-other-data" in line
    assert ("12 images against the checkpoint's 8" if other == "more images" else "as many images, but other names") in line
    assert _files(out) == before  # nothing written


@pytest.mark.slow
def test_resume_onto_other_data_goes_on_with_the_option_and_says_so(finished_run: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    _, run = finished_run
    out, data = _copy(run, tmp_path), _images(tmp_path / "other", 12)
    assert _run(data, out, "--epochs", "2", "--resume", "--resume-other-data") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "resume-other-data" in line]
    assert len(notes) == 1 and notes[0].startswith("torchclr: note: --data ") and "continuing on it" in notes[0]
    assert (out / "checkpoints" / "epoch-0002.safetensors").is_file()


@pytest.mark.slow
def test_resume_onto_a_finished_run_says_so_and_changes_nothing(finished_run: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    data, run = finished_run
    out = _copy(run, tmp_path)
    copied_data = tmp_path / "moved"  # the same images elsewhere (copied: other mtimes) are the same data
    shutil.copytree(data, copied_data)
    before = _files(out)
    assert _run(copied_data, out, "--epochs", "1", "--resume") == 0
    said = capsys.readouterr().out.strip().splitlines()
    assert said[-1] == (f"torchclr: the run in {out} is finished (step 2, epoch 1); nothing to do: give a larger --epochs "
                        "to train on, or --overwrite to start again")
    assert _files(out) == before
    assert _run(copied_data, out, "--epochs", "2", "--resume") == 0  # a larger --epochs trains on
    assert (out / "checkpoints" / "epoch-0002.safetensors").is_file()


@pytest.mark.slow
def test_the_same_command_again_on_a_finished_run_builds_nothing(finished_run: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from torchclr import train

    data, run = finished_run
    out = _copy(run, tmp_path)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was decoded and the network built for a finished run")

    monkeypatch.setattr(train, "build_pretraining", no_build)
    assert _run(data, out, "--epochs", "1", "--resume") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"torchclr: the run in {out} is finished (step 2, epoch 1)")
    without_size = [arg for arg in TINY if arg not in ("--image-size", "8")]  # the size the run found in the data
    assert main(["pretrain", "--data", str(data), "--out-dir", str(out), *without_size, "--epochs", "1", "--resume"]) == 0
    with pytest.raises(AssertionError, match="decoded"):  # another length, network or data takes the full path
        _run(data, out, "--epochs", "1", "--resume", "--proj-dim", "16")


@pytest.mark.slow
def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(finished_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = finished_run
    out = _copy(run, tmp_path)
    (out / "encoder.safetensors").unlink()  # killed between the last checkpoint and the encoder
    assert _run(data, out, "--epochs", "1", "--resume") == 0
    assert (out / "encoder.safetensors").is_file()


# ---- the data line, and what decoding left out ----

@pytest.mark.slow
def test_images_skipped_when_decoding_are_counted_with_the_images_used(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _images(tmp_path / "d", 24)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")  # a JPEG cut after its header
    (data / "empty.png").write_bytes(b"")  # a zero-byte file, left out when listing
    assert _run(data, tmp_path / "run", "--epochs", "1", "--data-mode", "memory") == 0
    out, err = capsys.readouterr()
    assert f"data: 25 images in {data}" in out  # listed: the zero-byte file is already out, the broken JPEG not yet
    (line,) = [line for line in err.splitlines() if "skipped" in line]
    assert line == (f"torchclr: skipped 2 of 26 image files (1 zero-byte, 1 truncated or corrupt), 1 when listing and 1 "
                    f"when decoding; 24 images used; list in {tmp_path / 'run' / 'skipped_files.csv'}")
