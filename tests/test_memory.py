"""The memory plan: what it measures, what it chooses, and that probing leaves the run untouched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
import torch

from torchclr import memory
from torchclr.cli import main
from torchclr.errors import UserError
from torchclr.evaluate.features import extract_features
from torchclr.loss import build_loss
from torchclr.memory import LinearCost, choose_chunk
from torchclr.models import SimCLR, build_simclr
from torchclr.optim import build_optimizer
from torchclr.step import StepContext, training_step

MiB = 2**20
needs_meter = pytest.mark.skipif(not memory.PeakMeter.available(torch.device("cpu")), reason="needs /proc/self/clear_refs (Linux)")


def tiny_context(batch_norm_eval: bool = False) -> tuple[StepContext, SimCLR]:
    """ResNet-18 on 8 px views, fp32: cheap, and every step is exactly reproducible."""
    torch.manual_seed(0)
    model = build_simclr("resnet18", 8, True, "mlp", 2, 16)
    if batch_norm_eval:
        model.eval()
    optimizer = build_optimizer(model, "lars", lr=0.5, weight_decay=1e-6, momentum=0.9)
    ctx = StepContext(model=model, loss_fn=build_loss("nt_xent", 0.5, 1.0), optimizer=optimizer,
                      scaler=torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), dtype=None, channels_last=False)
    return ctx, model


def test_cgroup_limit_v2_v1_and_none(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("250000\n")
    assert memory.cgroup_memory_left(tmp_path) == 750_000
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.cgroup_memory_left(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5")
    assert memory.cgroup_memory_left(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("100")
    assert memory.cgroup_memory_left(v1) == 95
    assert memory.cgroup_memory_left(tmp_path / "absent") is None


def test_cpu_free_memory_honours_the_cgroup_and_is_shared_by_local_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_meminfo_bytes", lambda field, path="": 8 * 2**30)
    monkeypatch.setattr(memory, "cgroup_memory_left", lambda: None)
    cpu = torch.device("cpu")
    assert memory.free_memory(cpu) == 8 * 2**30
    monkeypatch.setattr(memory, "cgroup_memory_left", lambda: 3 * 2**30)
    assert memory.free_memory(cpu) == 3 * 2**30
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory.free_memory(cpu) == 3 * 2**29


@needs_meter
def test_meter_sees_a_freed_peak() -> None:
    """64 MiB written and freed inside the block: the peak counts it, within the allocator's slack."""
    def prepare() -> Callable[[], object]:
        def run() -> None:
            block = torch.ones(64 * MiB // 4)
            del block
        return run

    peak = memory.measure_peak(prepare, torch.device("cpu"))
    assert 60 * MiB <= peak <= 80 * MiB


@needs_meter
def test_fit_recovers_fixed_and_per_image_bytes() -> None:
    """A workload of 24 MiB plus 3 MiB per image, all alive at once: the fit finds both parts."""
    def run_at(images: int) -> Callable[[], object]:
        def run() -> None:
            held = [torch.ones(24 * MiB // 4)] + [torch.ones(3 * MiB // 4) for _ in range(images)]
            del held
        return run

    cost = memory.fit_linear(run_at, (8, 32), torch.device("cpu"))
    assert cost.per_image == pytest.approx(3 * MiB, rel=0.1)
    assert cost.fixed == pytest.approx(24 * MiB, abs=8 * MiB)


COST = LinearCost(fixed=100 * MiB, per_image=10 * MiB)  # a step of n images needs 100 MiB + 10 MiB x n


def test_no_caching_when_the_batch_fits() -> None:
    chunk, reason = choose_chunk(COST, 0, 256, budget=3000 * MiB, requested="auto")
    assert chunk is None and "no gradient caching" in reason


def test_largest_equal_chunk_that_fits() -> None:
    """1100 MiB leave room for 100 images: the batch of 256 runs in 3 equal chunks of 86 (2 chunks of 128 would not fit)."""
    chunk, reason = choose_chunk(COST, 0, 256, budget=1100 * MiB, requested="auto")
    assert chunk == 86 and "chunks of 86" in reason
    assert COST.at(chunk) <= 1100 * MiB < COST.at(128)
    whole = 200 * MiB  # what chunking does not shrink leaves less room for the chunk
    chunk, _ = choose_chunk(COST, whole, 256, budget=1100 * MiB, requested="auto")
    assert chunk == 64 and COST.at(chunk) + whole <= 1100 * MiB


def test_an_explicit_chunk_or_off_wins() -> None:
    assert choose_chunk(COST, 0, 256, budget=1100 * MiB, requested=32)[0] == 32
    chunk, reason = choose_chunk(COST, 0, 256, budget=1100 * MiB, requested="off")
    assert chunk is None and "may run out of memory" in reason
    assert choose_chunk(COST, 0, 256, budget=1100 * MiB, requested=512)[0] is None  # a chunk as big as the batch: off


def test_a_batch_that_no_chunk_saves_says_what_fits() -> None:
    whole = 800 * MiB  # at batch 1024: views and loss, which chunking keeps
    with pytest.raises(UserError, match="--batch-size") as caught:
        choose_chunk(COST, whole, 1024, budget=600 * MiB, requested="auto")
    message = str(caught.value)
    assert "\n" not in message
    fits = int(re.search(r"at most --batch-size (\d+)", message).group(1))
    assert fits < 1024
    chunk, _ = choose_chunk(COST, int(whole * fits / 1024), fits, budget=600 * MiB, requested="auto")  # it does fit
    assert COST.at(chunk or fits) + whole * fits / 1024 <= 600 * MiB


def _state(model: SimCLR) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


@pytest.mark.slow
@needs_meter
def test_probing_leaves_the_run_untouched() -> None:
    """The probe steps copies of the model and optimizer, on views from its own random stream."""
    ctx, model = tiny_context()
    before, rng = _state(model), torch.get_rng_state()
    plan = memory.plan_pretraining(ctx, training_step, model, 16, 8, "auto", eval_images=100, infer=extract_features)
    for got, want in zip(_state(model), before, strict=True):
        assert torch.equal(got, want)
    assert not ctx.optimizer.state and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert plan.chunk is None and plan.network.per_image > 0 and 0 < plan.needed() < plan.budget
    assert "memory plan: a step of 16 images needs" in plan.describe()


@pytest.mark.slow
def test_a_batch_that_cannot_fit_fails_before_training(tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(memory, "free_memory", lambda device: 1 * MiB)
    out = tmp_path / "too-big"
    assert main(["pretrain", "--data", str(tiny_folder), "--out-dir", str(out), "--epochs", "1", "--batch-size", "16",
                 "--warmup-epochs", "0", "--no-progress", "--image-size", "16", "--knn-every", "0"]) == 2
    error = capsys.readouterr().err
    assert "--grad-cache-chunk" in error and "free to plan with" in error and len(error.strip().splitlines()) == 1
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()
