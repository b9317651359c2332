"""The guarded step and safe saving: NaN/inf never reaches a checkpoint, a full disk is one line with the previous
checkpoint intact, and SIGUSR1 saves mid-epoch and resumes exactly (in process; test_interrupts does it to a
real subprocess)."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import torchclr.train
from torchclr import checkpoint, writer
from torchclr.cli import main
from torchclr.errors import UserError
from torchclr.guard import FiniteGuard, all_finite

TINY = ["--batch-size", "4", "--image-size", "8", "--knn-every", "0", "--warmup-epochs", "0", "--no-progress",
        "--precision", "fp32", "--deterministic", "--lr", "0.5", "--seed", "5"]


@pytest.fixture(scope="module")
def eight_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps of 4 per epoch."""
    folder = tmp_path_factory.mktemp("eight")
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _pretrain(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", str(data), "--out-dir", str(out), *TINY, *extra])


def _all_checkpoints_finite(out: Path) -> list[str]:
    names = []
    for path in sorted((out / "checkpoints").glob("*.safetensors")):
        tensors, _ = checkpoint.load(path)
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()), path
        names.append(path.name)
    return names


def test_all_finite_sees_nan_and_inf_anywhere() -> None:
    tensors = [torch.ones(3), torch.zeros(2, 2)]
    assert all_finite(tensors)
    for bad in (float("nan"), float("inf"), float("-inf")):
        poisoned = [torch.ones(3), torch.zeros(2, 2)]
        poisoned[1][1, 0] = bad
        assert not all_finite(poisoned)
    assert all_finite([torch.full((4,), 3e38)])  # large but finite: max |x| does not overflow


def test_guard_names_the_first_bad_step_and_watches_bn_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    guard = FiniteGuard(model, step=10)
    guard.observe(torch.tensor(1.0))
    guard.check()
    model[1].running_var[0] = float("inf")  # the loss stays finite: only a buffer went bad
    guard.observe(torch.tensor(1.0))
    guard.observe(torch.tensor(float("nan")))
    with pytest.raises(UserError, match="at step 12;"):
        guard.check()


@pytest.mark.slow
def test_a_bad_last_update_of_an_epoch_is_never_saved(eight_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The update of step 2 (the epoch's last) writes inf into a weight while its loss, computed before, is finite."""
    real_build = torchclr.train.build_optimizer

    def poisoning_optimizer(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer, calls = real_build(*args, **kwargs), []

        def after_update(opt: torch.optim.Optimizer, *_: Any) -> None:
            calls.append(1)
            if len(calls) == 2:
                opt.param_groups[0]["params"][0].data[0].fill_(float("inf"))

        optimizer.register_step_post_hook(after_update)
        return optimizer

    monkeypatch.setattr(torchclr.train, "build_optimizer", poisoning_optimizer)
    out = tmp_path / "poisoned"
    assert _pretrain(eight_images, out, "--epochs", "2", "--save-every-steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "became NaN or infinite at step 2;" in err[0], err
    assert _all_checkpoints_finite(out) == ["epoch-0000-step-00000001.safetensors"]
    assert not (out / "encoder.safetensors").exists()


@pytest.mark.slow
def test_huge_learning_rate_stops_with_every_checkpoint_finite(eight_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "huge"
    code = _pretrain(eight_images, out, "--epochs", "3", "--save-every-steps", "1", "--optimizer", "sgd",
                     "--lr", "1e12", "--keep-checkpoints", "0")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "became NaN or infinite at step" in err[0], err
    _all_checkpoints_finite(out)


def test_skipped_nonfinite_steps_are_counted(eight_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = torchclr.train.build_loss

    def every_other_nan(*args: Any, **kwargs: Any) -> Any:
        loss, calls = real_build(*args, **kwargs), []

        def forward(z: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return loss(z) * (float("nan") if len(calls) % 2 else 1.0)

        return forward

    monkeypatch.setattr(torchclr.train, "build_loss", every_other_nan)
    out = tmp_path / "skipping"
    assert _pretrain(eight_images, out, "--epochs", "2", "--skip-nonfinite-steps") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "epoch_loss" in r] == [1, 2]
    assert all(np.isfinite(r["epoch_loss"]) for r in records if "epoch_loss" in r)
    _all_checkpoints_finite(out)


def test_save_refuses_a_nonfinite_tensor_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    checkpoint.save_atomically({"w": torch.ones(2)}, {"kind": "x"}, path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="tensor w holds NaN or infinity"):
        checkpoint.save_atomically({"w": torch.tensor([1.0, float("inf")])}, {"kind": "x"}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


class _DiskFullWriter:
    """A file whose writes stop half-way with ENOSPC, as on a full disk."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> "_DiskFullWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _fill_disk_from_save(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """The disk fills after `after` checkpoint files (the run's other files, written by the same writer, fit)."""
    real_fdopen, calls = os.fdopen, []

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(fd, *args, **kwargs)
        if ".safetensors." not in os.readlink(f"/proc/self/fd/{fd}"):
            return handle
        calls.append(fd)
        return _DiskFullWriter(handle) if len(calls) > after else handle

    monkeypatch.setattr(writer.os, "fdopen", fdopen)


def test_full_disk_is_one_line_naming_the_path_with_the_old_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    checkpoint.save_atomically({"w": torch.ones(1000)}, {"kind": "x"}, path)
    before = path.read_bytes()
    _fill_disk_from_save(monkeypatch, after=0)
    with pytest.raises(UserError) as info:
        checkpoint.save_atomically({"w": torch.zeros(1000)}, {"kind": "x"}, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "no space left" in message and "intact" in message
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_full_disk_during_a_run(eight_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _fill_disk_from_save(monkeypatch, after=1)  # the first checkpoint fits, the second does not
    out = tmp_path / "full"
    assert _pretrain(eight_images, out, "--epochs", "1", "--save-every-steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "epoch-0001.safetensors" in err[0], err
    assert _all_checkpoints_finite(out) == ["epoch-0000-step-00000001.safetensors"]
    assert not list((out / "checkpoints").glob(".*"))


@pytest.mark.slow
def test_free_space_is_checked_before_training(eight_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: SimpleNamespace(free=1 << 20))
    out = tmp_path / "tight"
    assert _pretrain(eight_images, out, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not enough free space" in err[0] and str(out / "checkpoints") in err[0], err
    assert not (out / "metrics.jsonl").exists()  # not a single step ran


@pytest.mark.slow
def test_sigusr1_saves_mid_epoch_and_the_resumed_run_is_identical(eight_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    whole = tmp_path / "whole"
    assert _pretrain(eight_images, whole, "--epochs", "2") == 0

    real_step, calls = torchclr.train.training_step, []

    def step_then_signal(*args: Any) -> torch.Tensor:
        loss = real_step(*args)
        if args[0].guard is not None:  # a step of the run, not of the memory plan's probe
            calls.append(1)
        if len(calls) == 3:  # epoch 2, step 1
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss

    monkeypatch.setattr(torchclr.train, "training_step", step_then_signal)
    split = tmp_path / "split"
    capsys.readouterr()
    assert _pretrain(eight_images, split, "--epochs", "2") == 128 + signal.SIGUSR1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped by SIGUSR1 at step 3 (epoch 2, step 1 of 2)" in err[0] and "--resume" in err[0], err
    assert (split / "checkpoints" / "epoch-0001-step-00000003.safetensors").is_file()
    monkeypatch.setattr(torchclr.train, "training_step", real_step)
    assert _pretrain(eight_images, split, "--epochs", "2", "--resume") == 0

    expected, _ = checkpoint.load(whole / "encoder.safetensors")
    got, _ = checkpoint.load(split / "encoder.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(3) == 1
