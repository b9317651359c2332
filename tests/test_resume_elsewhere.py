"""A run resumes on a machine with fewer processes (or GPUs) than the one that wrote its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchclr import checkpoint
from torchclr.cli import main

FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "0.3", "--warmup-epochs", "0.5", "--knn-every", "0",
        "--no-progress", "--no-cifar-stem", "--image-size", "16"]


@pytest.mark.slow
def test_resume_of_a_checkpoint_written_by_more_processes(tmp_path: Path, tiny_folder: Path) -> None:
    """Four ranks' augmentation states and eight GPUs' RNG states in the file; one CPU process resumes from it."""
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--out-dir", str(out), *FAST, "--epochs", "1"]) == 0
    path = out / "checkpoints" / "epoch-0001.safetensors"
    tensors, meta = checkpoint.load(path)
    rank0 = tensors["rng.augment"].clone()
    extra = {f"rng.augment.rank{r}": rank0 if r == 0 else torch.Generator().manual_seed(r).get_state() for r in range(4)}
    extra.update({f"rng.cuda.{i}": torch.zeros(16, dtype=torch.uint8) for i in range(8)})
    checkpoint.save_atomically({**tensors, **extra}, meta, path)
    assert main(["pretrain", "--data", str(tiny_folder), "--out-dir", str(out), *FAST, "--resume"]) == 0
    _, resumed = checkpoint.load(out / "checkpoints" / "epoch-0002.safetensors")
    assert resumed["epoch"] == 2 and resumed["step"] == 2 * meta["step"]
