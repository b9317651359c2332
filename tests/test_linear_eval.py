"""`--protocol linear`: the paper's linear evaluation (SGD on the frozen encoder's h of random crops)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchclr.cli import main
from torchclr.evaluate import LinearSettings, extract_features, linear_eval


@pytest.mark.parametrize("images, expected", [
    (1_281_167, (90, 4096, 1.6)),  # ImageNet: the paper's 90 epochs, batch 4096, lr 0.1 x 4096 / 256
    (50_000, (90, 1024, 0.4)),  # CIFAR-10: 90 epochs, a batch that leaves an epoch >= 32 steps, lr by the same rule
    (5_000, (15, 128, 0.05)),  # the shipped sample: epochs in proportion to the set, at least 15
    (100, (15, 16, 0.00625)),  # the smallest batch
])
def test_sizes_scale_with_the_training_set(images: int, expected: tuple[int, int, float]) -> None:
    epochs, batch, lr = LinearSettings().resolve(images)
    assert (epochs, batch) == expected[:2] and lr == pytest.approx(expected[2])
    assert LinearSettings(epochs=3, batch_size=64, base_lr=0.2).resolve(images) == (3, min(64, images), pytest.approx(0.05))


def coloured_squares(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 reddish, class 1 bluish, at random brightness: separable from h of any crop of them."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    base = torch.where(labels[:, None] == 0, torch.tensor([0.9, 0.2, 0.2]), torch.tensor([0.2, 0.2, 0.9]))
    images = base[:, :, None, None] * torch.empty(count, 1, 1, 1).uniform_(0.5, 1.0, generator=generator)
    images = images + 0.1 * torch.rand(count, 3, 16, 16, generator=generator)
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


def small_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.slow
def test_learns_a_separable_task_and_leaves_the_encoder_as_it_was() -> None:
    encoder, cpu = small_encoder().train(), torch.device("cpu")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    (train, train_labels), (test, test_labels) = coloured_squares(256, 0), coloured_squares(128, 1)
    test_h = extract_features(encoder, test, cpu, autocast_dtype=None)
    result = linear_eval(encoder, train, train_labels, test_h, test_labels, 2, LinearSettings(epochs=5), cpu, 64, None)
    assert result["top1"] >= 95 and (result["epochs"], result["batch_size"]) == (5, 16)
    for key, value in encoder.state_dict().items():  # frozen: weights and BN running statistics untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert encoder.training  # its mode is given back

    shuffled = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(0))]
    noise = linear_eval(encoder, train, shuffled, test_h, test_labels, 2, LinearSettings(epochs=5), cpu, 64, None)
    assert noise["top1"] <= 75  # labels unrelated to the images: about chance


@pytest.mark.parametrize("flag, value", [("--linear-epochs", "0"), ("--linear-batch-size", "-1"), ("--linear-lr", "0"),
                                         ("--linear-weight-decay", "-0.1")])
def test_bad_settings_are_one_line_naming_the_option(flag: str, value: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--checkpoint", "/no/such.safetensors", "--protocol", "linear", flag, value]) == 2
    error = capsys.readouterr().err
    assert flag in error and len(error.strip().splitlines()) == 1
