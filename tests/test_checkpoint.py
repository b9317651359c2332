from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from torchclr import checkpoint
from torchclr.errors import UserError
from torchclr.models import build_encoder


def test_round_trip_of_tensors_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "a" / "ck.safetensors"
    checkpoint.save_atomically({"w": torch.arange(6.0).reshape(2, 3)}, {"epoch": 3, "nested": {"x": [1, 2]}}, path)
    tensors, meta = checkpoint.load(path)
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3)) and meta == {"epoch": 3, "nested": {"x": [1, 2]}}
    assert [p.name for p in path.parent.iterdir()] == ["ck.safetensors"]  # no temporary file left


def test_failed_write_leaves_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    checkpoint.save_atomically({"w": torch.ones(2)}, {"v": 1}, path)
    with pytest.raises(TypeError):
        checkpoint.save_atomically({"w": torch.zeros(2)}, {"v": object()}, path)  # metadata not JSON
    tensors, meta = checkpoint.load(path)
    assert meta == {"v": 1} and torch.equal(tensors["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]


def test_foreign_and_broken_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")
    pickle_file = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, pickle_file)
    with pytest.raises(UserError, match="not a readable safetensors"):
        checkpoint.load(pickle_file)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(1)}, other)
    with pytest.raises(UserError, match="not written by torchclr"):
        checkpoint.load(other)
    truncated = tmp_path / "cut.safetensors"
    checkpoint.save_atomically({"w": torch.ones(1000)}, {}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(UserError, match="cut.safetensors"):
        checkpoint.load(truncated)


def test_architecture_mismatch_is_one_clear_error(tmp_path: Path) -> None:
    small, large = build_encoder("resnet18", 32), build_encoder("resnet50", 32)
    with pytest.raises(UserError, match="does not fit resnet50") as info:
        checkpoint.load_model_state(large, small.state_dict(), tmp_path / "x", "resnet50")
    assert "\n" not in str(info.value)


def test_optimizer_state_survives_the_round_trip(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5)
    checkpoint.save_training(tmp_path / "t.safetensors", model, optimizer, scheduler, None, {"epoch": 1, "step": 1, "model": {"arch": "resnet18", "cifar_stem": True}, "config": {}})
    tensors, meta = checkpoint.load(tmp_path / "t.safetensors")
    fresh = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda s: 0.5)
    checkpoint.restore_training(tensors, meta, fresh, fresh_scheduler, None)
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)
    assert json.dumps(fresh.state_dict()["param_groups"]) == json.dumps(optimizer.state_dict()["param_groups"])
