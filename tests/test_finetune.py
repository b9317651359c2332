"""Fine-tuning on a share of the labels: the class-balanced subset, and that the whole network learns from it."""

from __future__ import annotations

import torch

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
