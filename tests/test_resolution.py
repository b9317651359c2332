"""--resolution-schedule: the syntax, the stages' view specs and sizes, and exact resume across a stage change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchclr import checkpoint
from torchclr.cli import main
from torchclr.config import PretrainConfig
from torchclr.errors import UserError
from torchclr.transforms import AugmentSpec
from torchclr.transforms.batched import BatchAugment, StagedAugment
from torchclr.transforms.resolution import ResolutionSchedule


def test_stages_by_fraction_of_the_run() -> None:
    schedule = ResolutionSchedule.parse("16@0, 24@0.4, 32@0.8")
    assert schedule.sizes == (16, 24, 32) and schedule.final_size == 32
    # 100 steps: 0-39 at 16 px, 40-79 at 24, 80-99 at 32
    assert [schedule.stage_at(step, 100) for step in (0, 39, 40, 79, 80, 99)] == [0, 0, 1, 1, 2, 2]
    assert schedule.step_cost(0) == pytest.approx(0.25) and schedule.step_cost(2) == 1.0


@pytest.mark.parametrize("text, needle", [
    ("16:32", "SIZE@START"), ("16@0,", "SIZE@START"), ("a@0", "SIZE@START"), ("16@0.5,32@0.8", "start at 0"),
    ("16@0,32@0.8,24@0.5", "increase"), ("16@0,32@1", "below 1"), ("4@0,32@0.5", "at least 8"),
])
def test_bad_schedules_name_the_option(text: str, needle: str) -> None:
    with pytest.raises(UserError, match="--resolution-schedule") as error:
        ResolutionSchedule.parse(text)
    assert needle in str(error.value)


def test_config_checks_the_schedule_against_the_run() -> None:
    with pytest.raises(UserError, match="ends at 32 px but --image-size is 48"):
        PretrainConfig(resolution_schedule="16@0,32@0.5", image_size=48).validate()
    with pytest.raises(UserError, match="needs --augment-mode batched"):
        PretrainConfig(resolution_schedule="16@0,32@0.5", augment_mode="per-image").validate()
    with pytest.raises(UserError, match="--augment-ramp"):
        PretrainConfig(resolution_schedule="16@0,32@0.5", augment_ramp=0.0).validate()


def test_augmentation_ramps_with_the_size() -> None:
    spec = AugmentSpec(image_size=32, jitter_strength=0.5, crop_scale=(0.2, 1.0))
    first, middle, last = ResolutionSchedule.parse("16@0,24@0.4,32@0.8", ramp=0.5).stage_specs(spec)
    assert (first.image_size, middle.image_size, last.image_size) == (16, 24, 32)
    assert first.jitter_strength == pytest.approx(0.25) and middle.jitter_strength == pytest.approx(0.375)
    assert first.crop_scale == pytest.approx((0.6, 1.0)) and middle.crop_scale == pytest.approx((0.4, 1.0))
    assert last == spec.__class__(**{**spec.__dict__, "blur_p": spec.effective_blur_p})  # the last stage is the run's spec
    flat = ResolutionSchedule.parse("16@0,32@0.5").stage_specs(spec)
    assert all(s.jitter_strength == 0.5 and s.crop_scale == (0.2, 1.0) for s in flat)


def test_staged_views_are_each_stage_s_own_views() -> None:
    """Each stage gives fixed-shape views of its size, the very views of a BatchAugment of its spec."""
    schedule = ResolutionSchedule.parse("8@0,16@0.5", ramp=0.5)
    specs = schedule.stage_specs(AugmentSpec(image_size=16))
    staged = StagedAugment(specs, schedule.stage_at)
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    for step, size, spec in ((0, 8, specs[0]), (9, 16, specs[1])):
        staged.set_step(step, 10)
        first, second = staged.two_views(images, torch.Generator().manual_seed(step))
        reference = BatchAugment(spec).two_views(images, torch.Generator().manual_seed(step))
        assert first.shape == second.shape == (6, 3, size, size)
        assert torch.equal(first, reference[0]) and torch.equal(second, reference[1])
    staged.set_step(0, 1000)  # a longer plan (a --time-budget re-planned) never goes back to smaller views
    assert staged.spec.image_size == 16


FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "0.3", "--warmup-epochs", "0.5", "--knn-every", "0",
        "--no-final-report", "--no-progress", "--seed", "3", "--deterministic", "--precision", "fp32",
        "--resolution-schedule", "8@0,12@0.25,16@0.75", "--augment-ramp", "0.5"]


def _run(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", str(data), "--out-dir", str(out), *FAST, *extra])


@pytest.mark.slow
def test_resume_across_a_stage_change_is_exact(tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 steps (4 per epoch): 8 px for steps 1-2, 12 px for 3-6, 16 px for 7-8. Stopped after epoch 1 (step 4) and
    resumed, the run crosses the 12 -> 16 px change and writes the same epoch-2 checkpoint as a run never stopped."""
    seen: list[int] = []
    real_views = StagedAugment.two_views

    def recording_views(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        first, second = real_views(self, *args, **kwargs)
        seen.append(first.shape[-1])  # the views of each training step (the memory plan makes its own)
        return first, second

    monkeypatch.setattr(StagedAugment, "two_views", recording_views)
    whole = tmp_path / "whole"
    assert _run(tiny_folder, whole) == 0
    assert seen == [8, 8, 12, 12, 12, 12, 16, 16]

    real_save = checkpoint.save_training

    def save_then_stop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_training", save_then_stop)
    split = tmp_path / "split"
    assert _run(tiny_folder, split) == 130
    monkeypatch.setattr(checkpoint, "save_training", real_save)
    seen.clear()
    assert _run(tiny_folder, split, "--resume") == 0
    assert seen == [12, 12, 16, 16]

    expected, _ = checkpoint.load(whole / "checkpoints" / "epoch-0002.safetensors")
    resumed, meta = checkpoint.load(split / "checkpoints" / "epoch-0002.safetensors")
    assert meta["epoch"] == 2 and expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert "image_size: 16" in (whole / "config.yaml").read_text()  # the encoder's size: the last stage's
