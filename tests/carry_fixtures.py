"""A tiny finished pretraining run, shared by the tests of what comes after training (embed, export, report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchclr.cli import main

TINY_RUN = ["--epochs", "1", "--batch-size", "16", "--lr", "0.3", "--warmup-epochs", "0.5", "--knn-k", "5",
            "--no-progress", "--seed", "3", "--no-cifar-stem"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Path:
    """The run folder of one epoch of ResNet-18 at 32 px on `tiny_folder` (labelled train/test splits)."""
    out = tmp_path_factory.mktemp("carry") / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--out-dir", str(out), *TINY_RUN]) == 0
    return out
