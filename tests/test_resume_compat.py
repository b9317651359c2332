"""Checkpoints written before the schedule became a function of the step (torchclr 0.2, a LambdaLR's state in the
file) resume exactly: the same weights as an uninterrupted run of today's code."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from torchclr import checkpoint
from torchclr.config import PretrainConfig
from torchclr.train import pretrain

FIXTURE = Path(__file__).parent / "fixtures" / "v02-lambdalr"
sys.path.insert(0, str(FIXTURE))
from make_fixture import tiny_encoder  # noqa: E402  (the encoder the fixture was trained with)


def _config(data: Path, out: Path) -> PretrainConfig:
    """The fixture run's settings (make_fixture.py)."""
    return PretrainConfig(data=str(data), image_size=16, batch_size=8, epochs=3, warmup_epochs=1, precision="fp32",
                          deterministic=True, final_report=False, knn_every=0, keep_checkpoints=0, progress=False,
                          out_dir=str(out), seed=3, lr=0.5, save_every_steps=1, head_shift=True)  # 0.2's head


def _encoder(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = checkpoint.load(run / "encoder.safetensors")
    return tensors


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("compat")
    data = write_image_folder(root / "data", {"train": 8, "test": 4}, size=16)
    pretrain(_config(data, root / "fresh"), encoder=tiny_encoder())
    return data, _encoder(root / "fresh")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["epoch-0001.safetensors", "epoch-0001-step-00000003.safetensors"])
def test_an_old_lambdalr_checkpoint_resumes_bitwise(uninterrupted: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path,
                                                    name: str) -> None:
    data, expected = uninterrupted
    _, meta = checkpoint.load(FIXTURE / name)
    assert "scheduler" in meta and "schedule" not in meta  # really the old format
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / name, tmp_path / "run" / "checkpoints" / name)
    pretrain(_config(data, tmp_path / "run"), resume="latest", encoder=tiny_encoder())
    resumed = _encoder(tmp_path / "run")
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    # and the old code's own uninterrupted run, up to another CPU's order of float operations
    old = checkpoint.load(FIXTURE / "encoder-after-3-epochs.safetensors")[0]
    assert all(torch.allclose(resumed[k], old[k], rtol=1e-5, atol=1e-6) for k in old)


@pytest.mark.slow
def test_an_old_checkpoint_without_head_shift_is_one_line(tmp_path: Path) -> None:
    """Today's default head has no learnt shift; a 0.2 run resumed without --head-shift is told how to resume it."""
    from torchclr.errors import UserError

    data = write_image_folder(tmp_path / "data", {"train": 8, "test": 4}, size=16)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / "epoch-0001.safetensors", tmp_path / "run" / "checkpoints")
    config = dataclasses.replace(_config(data, tmp_path / "run"), head_shift=False)
    with pytest.raises(UserError, match=r"resumes with --head-shift") as caught:
        pretrain(config, resume="latest", encoder=tiny_encoder())
    assert "\n" not in str(caught.value)
