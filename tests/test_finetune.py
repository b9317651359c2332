"""Fine-tuning on a share of the labels: the class-balanced subset, and that the whole network learns from it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchclr import memory
from torchclr.errors import UserError
from torchclr.evaluate import finetune as finetune_module
from torchclr.evaluate.finetune import FinetuneSettings, finetune, labelled_subset, paper_epochs
from torchclr.models import ResNetEncoder


def test_labelled_subset_is_class_balanced_seeded_and_never_empty() -> None:
    labels = torch.arange(10).repeat_interleave(torch.tensor([100] * 9 + [7]))  # the last class is rare
    subset = labelled_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[subset], minlength=10)
    assert counts[:9].tolist() == [10] * 9 and counts[9] == 1  # 10% of 100, and at least one of 7
    assert len(subset.unique()) == len(subset)
    assert torch.equal(subset, labelled_subset(labels, 0.1, seed=0))
    assert not torch.equal(subset, labelled_subset(labels, 0.1, seed=1))
    assert len(labelled_subset(labels, 1.0, seed=0)) == len(labels)


def test_paper_epochs() -> None:
    assert paper_epochs(0.01) == 60 and paper_epochs(0.1) == 30


def _two_colour_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 mostly red, class 1 mostly blue, with noise: learnable through crop and flip, not by a random net's h alone."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    images = torch.rand(count, 3, 16, 16, generator=generator) * 120
    images[labels == 0, 0] += 120
    images[labels == 1, 2] += 120
    return images.to(torch.uint8), labels


@pytest.mark.slow
def test_finetuning_learns_the_classes_and_leaves_the_encoder_untouched() -> None:
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18", cifar_stem=True)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train_images, train_labels = _two_colour_images(64, seed=0)
    test_images, test_labels = _two_colour_images(40, seed=1)
    settings = FinetuneSettings(label_fraction=0.5, epochs=8, batch_size=16, base_lr=0.4)
    result = finetune(encoder, train_images, train_labels, test_images, test_labels, 2, settings, torch.device("cpu"))
    assert result["labelled_images"] == 32 and result["epochs"] == 8
    assert result["top1"] >= 90.0  # chance is 50%
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # a copy was fine-tuned


@pytest.mark.slow
def test_a_batch_bigger_than_the_memory_plan_runs_in_pieces_and_still_learns(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(finetune_module, "images_per_pass", lambda *args: 4)
    torch.manual_seed(0)
    train_images, train_labels = _two_colour_images(64, seed=0)
    test_images, test_labels = _two_colour_images(40, seed=1)
    settings = FinetuneSettings(label_fraction=0.5, epochs=8, batch_size=16, base_lr=0.4)
    encoder, seen = ResNetEncoder("resnet18", cifar_stem=True), []
    encoder.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])) if module.training else None)
    result = finetune(encoder, train_images, train_labels, test_images, test_labels, 2, settings, torch.device("cpu"))
    assert "batches of 16 in pieces of at most 4 images" in capsys.readouterr().err
    assert seen and max(seen) == 4 and sum(seen) == 8 * 32  # every labelled image once an epoch, 4 at a time
    assert result["top1"] >= 90.0


def test_images_per_pass_follows_the_measured_cost_and_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(4, 2)
    monkeypatch.setattr(memory, "fit_linear", lambda run_at, sizes, device: memory.LinearCost(fixed=1_000, per_image=100.0))
    cpu = torch.device("cpu")
    for free, expected in ((10**9, 256), (int((1_000 + 100 * 50) / memory.HEADROOM) + 1, 50)):
        monkeypatch.setattr(memory, "free_memory", lambda device, free=free: free)
        assert finetune_module.images_per_pass(model, 8, 256, cpu, None) == expected
    monkeypatch.setattr(memory, "free_memory", lambda device: 1_200)
    with pytest.raises(UserError, match="fine-tuning needs .* for 4 images at 8 px"):
        finetune_module.images_per_pass(model, 8, 256, cpu, None)


@pytest.mark.slow
def test_images_per_pass_measures_the_real_pass() -> None:
    encoder = ResNetEncoder("resnet18", cifar_stem=True)
    model = finetune_module.Classifier(encoder, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert finetune_module.images_per_pass(model, 16, 64, torch.device("cpu"), torch.bfloat16) == 64  # tiny: all fit
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # probed on a copy: BN stats untouched
