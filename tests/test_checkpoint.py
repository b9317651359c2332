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


def test_a_background_write_holds_the_tensors_of_the_moment_it_was_asked_for(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Training goes on while a checkpoint is written: the file holds the values at `save_atomically`, not the
    ones the next step writes in place; the write runs in another thread; `wait` returns once it is on disk."""
    import threading

    from torchclr.writer import BackgroundWrites

    release, threads = threading.Event(), []
    real_write = checkpoint._write

    def slow_write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        threads.append(threading.current_thread())
        release.wait(10)
        real_write(path, tensors, metadata)

    monkeypatch.setattr(checkpoint, "_write", slow_write)
    writes, weights, path = BackgroundWrites(), torch.arange(4.0), tmp_path / "ck.safetensors"
    checkpoint.save_atomically({"w": weights}, {"epoch": 1}, path, writes=writes)
    weights.add_(100)  # the next optimiser step, in place, while the write is pending
    assert not path.exists()
    release.set()
    writes.wait()
    assert torch.equal(checkpoint.load(path)[0]["w"], torch.arange(4.0))
    assert threads and threads[0] is not threading.main_thread()


def test_a_background_write_error_is_raised_at_the_next_wait(tmp_path: Path) -> None:
    from torchclr.writer import BackgroundWrites

    writes = BackgroundWrites()
    (tmp_path / "file").write_text("in the way")
    checkpoint.save_atomically({"w": torch.ones(2)}, {}, tmp_path / "ck.safetensors", writes=writes)
    writes.submit(lambda: checkpoint._write(tmp_path / "file" / "under-a-file.safetensors", {"w": torch.ones(1)}, {}))
    with pytest.raises(UserError, match="cannot write checkpoint .*under-a-file"):
        writes.wait()
    assert checkpoint.load(tmp_path / "ck.safetensors")[0]["w"].sum() == 2  # the write before it landed
    writes.wait()  # the error is raised once


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
    checkpoint.save_training(tmp_path / "t.safetensors", model, optimizer, 0.25, None, {"epoch": 1, "step": 1, "model": {"arch": "resnet18", "cifar_stem": True}, "config": {}})
    tensors, meta = checkpoint.load(tmp_path / "t.safetensors")
    fresh = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    assert checkpoint.restore_training(tensors, meta, fresh, None) == 0.25  # the peak lr comes back
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)
    assert json.dumps(fresh.state_dict()["param_groups"]) == json.dumps(optimizer.state_dict()["param_groups"])


def _training_checkpoint(tmp_path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Path:
    path = tmp_path / "t.safetensors"
    checkpoint.save_training(path, model, optimizer, 0.1, None, {"epoch": 1, "step": 1, "model": {"arch": "resnet18", "cifar_stem": True}, "config": {}})
    return path


def test_momentum_comes_back_in_the_parameters_memory_format(tmp_path: Path) -> None:
    from torchclr.optim import build_optimizer

    def channels_last_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_encoder("resnet18", 32).to(memory_format=torch.channels_last)

    model = channels_last_model()
    optimizer = build_optimizer(model, "lars", lr=0.1, weight_decay=1e-6, momentum=0.9)
    model(torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)).sum().backward()
    optimizer.step()
    tensors, meta = checkpoint.load(_training_checkpoint(tmp_path, model, optimizer))
    fresh = channels_last_model()
    fresh_optimizer = build_optimizer(fresh, "lars", lr=0.1, weight_decay=1e-6, momentum=0.9)
    checkpoint.restore_training(tensors, meta, fresh_optimizer, None)
    convolutions = [p for p in fresh.parameters() if p.ndim == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    for param, saved in zip(fresh.parameters(), model.parameters(), strict=True):
        buffer = fresh_optimizer.state[param]["momentum_buffer"]
        assert buffer.stride() == param.stride()
        assert torch.equal(buffer, optimizer.state[saved]["momentum_buffer"])


def test_rng_states_of_gpus_this_machine_lacks_are_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint from 12 GPUs resumed on 2: GPUs 0 and 1 get their own states (by number, not by name order)."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tensors, meta = checkpoint.load(_training_checkpoint(tmp_path, model, optimizer))
    tensors.update({f"rng.cuda.{i}": torch.full((16,), i, dtype=torch.uint8) for i in range(12)})
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state))
    checkpoint.restore_rng_state(tensors, meta["rng"], None)
    assert sorted(restored) == [0, 1]
    assert all(torch.equal(restored[i], torch.full((16,), i, dtype=torch.uint8)) for i in restored)


def test_a_generator_state_of_another_kind_leaves_the_generator_as_it_is() -> None:
    generator = torch.Generator().manual_seed(5)
    before = generator.get_state()
    checkpoint.set_generator_state(generator, torch.zeros(16, dtype=torch.uint8))  # a CUDA generator's size
    assert torch.equal(generator.get_state(), before)
    other = torch.Generator().manual_seed(7).get_state()
    checkpoint.set_generator_state(generator, other)
    assert torch.equal(generator.get_state(), other)


def test_leaving_the_writes_block_by_an_error_lands_the_pending_write_first(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that stops on an error (a diverged step) still has its last good checkpoint on disk, and a write that
    failed meanwhile is not raised over the error that ended the run."""
    import time

    from torchclr.writer import BackgroundWrites

    real_write = checkpoint._write

    def slow_write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        time.sleep(0.5)
        real_write(path, tensors, metadata)

    monkeypatch.setattr(checkpoint, "_write", slow_write)
    with pytest.raises(ZeroDivisionError), BackgroundWrites() as writes:
        checkpoint.save_atomically({"w": torch.ones(2)}, {}, tmp_path / "good.safetensors", writes=writes)
        raise ZeroDivisionError
    assert checkpoint.load(tmp_path / "good.safetensors")[0]["w"].sum() == 2
    with pytest.raises(ZeroDivisionError), BackgroundWrites() as writes:
        writes.submit(lambda: checkpoint._write(tmp_path / "missing" / "x.safetensors", {"w": torch.ones(1)}, {}))
        raise ZeroDivisionError
