"""load_encoder: eval mode (batch-independent h, BN statistics untouched), its transform, the public API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from carry_fixtures import trained_run  # noqa: F401 (a fixture)
from PIL import Image

import torchclr
from torchclr.data.sources import ImageSet
from torchclr.evaluate.features import eval_images


def test_public_api_and_version() -> None:
    from torchclr import PretrainConfig, load_encoder, pretrain

    assert callable(load_encoder) and callable(pretrain) and PretrainConfig().arch == "resnet18"
    major, minor, patch = (int(part) for part in torchclr.__version__.split("."))
    assert (major, minor) >= (0, 2)


@pytest.mark.slow
def test_same_image_alone_and_in_a_batch_gives_the_same_h(trained_run: Path) -> None:
    encoder, transform, info = torchclr.load_encoder(trained_run / "encoder.safetensors")
    assert not encoder.training and info["config"].image_size == 32
    running_mean = encoder.net.bn1.running_mean.clone()
    images = torch.stack([transform(Image.open(p)) for p in sorted((Path(info["config"].data) / "test").rglob("*.png"))[:8]])
    with torch.no_grad():
        alone, in_batch = encoder(images[:1]), encoder(images)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5, rtol=0), (alone - in_batch).abs().max()
    assert torch.equal(encoder.net.bn1.running_mean, running_mean)  # a forward pass does not move the statistics


def test_transform_takes_pil_or_uint8_and_matches_the_evaluation_centre_view() -> None:
    from torchclr.transforms import eval_transform

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(100, 130, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    transform = eval_transform(80)  # above 64 px: resize to 91, centre crop 80 (ImageNet's 256/224)
    from_pil, from_tensor = transform(Image.fromarray(pixels)), transform(tensor)
    assert from_pil.shape == (3, 80, 80) and from_pil.dtype == torch.float32 and 0 <= from_pil.min() and from_pil.max() <= 1
    reference = eval_images(ImageSet("x", [0], ["c"], tensor=tensor[None]), 80)[0].float() / 255
    assert torch.allclose(from_tensor, reference, atol=1 / 255 + 1e-6)
    assert torch.allclose(from_pil, from_tensor, atol=2 / 255)


@pytest.mark.slow
def test_a_custom_module_trains_and_loads_back(tmp_path: Path, few_images_folder: Path) -> None:
    from torch import nn

    from torchclr import PretrainConfig, UserError, load_encoder, pretrain

    def module() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    config = PretrainConfig(data=str(few_images_folder), out_dir=str(tmp_path / "run"), epochs=1, batch_size=16, warmup_epochs=0, lr=0.3,
                            knn_every=0, progress=False, image_size=32)
    mine = module()
    before = mine[0].weight.detach().clone()
    pretrain(config, encoder=mine)
    assert not torch.equal(before, mine[0].weight)  # it trained the module it was given
    with pytest.raises(UserError, match="custom encoder module"):
        load_encoder(tmp_path / "run" / "encoder.safetensors")
    loaded = load_encoder(tmp_path / "run" / "encoder.safetensors", encoder=module()).encoder
    assert loaded.feature_dim == 8 and torch.equal(loaded.net[0].weight, mine[0].weight)
