"""The figure 5 ablation's extra transforms against plain references, and the one-branch protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchclr.config import PretrainConfig
from torchclr.data.pipeline import build_view_batches
from torchclr.data.sources import open_images
from torchclr.errors import UserError
from torchclr.transforms import AugmentSpec, BatchAugment
from torchclr.transforms.ablation import AblationOps, cutout, gaussian_noise, rotate90, sobel
from torchclr.transforms.batched import rgb_to_grayscale


def images(count: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_cutout_matches_slicing() -> None:
    batch = images()
    sides = torch.tensor([4.0, 6.5, 3.0, 12.0, 5.9, 2.0])
    centres = torch.tensor([[6.0, 6.0], [0.0, 0.0], [11.0, 5.0], [6.0, 6.0], [2.0, 11.7], [7.0, 3.2]])
    expected = batch.clone()
    for i, (side, (row, col)) in enumerate(zip(sides.tolist(), centres.tolist())):  # DeVries & Taylor's loop
        y, x, half = int(row), int(col), int(side) // 2
        y1, y2, x1, x2 = np.clip([y - half, y + half, x - half, x + half], 0, 12)
        expected[i, :, y1:y2, x1:x2] = 0.0
    torch.testing.assert_close(cutout(batch, sides, centres), expected, rtol=0, atol=0)


def reference_sobel(luma: np.ndarray) -> np.ndarray:
    """|(Gx, Gy)| / (4 sqrt 2) pixel by pixel, borders replicated, Gx = [[-1,0,1],[-2,0,2],[-1,0,1]]."""
    height, width = luma.shape
    at = lambda r, c: luma[min(max(r, 0), height - 1), min(max(c, 0), width - 1)]  # noqa: E731
    out = np.zeros_like(luma)
    for r in range(height):
        for c in range(width):
            gx = sum(w * (at(r + dr, c + 1) - at(r + dr, c - 1)) for dr, w in ((-1, 1), (0, 2), (1, 1)))
            gy = sum(w * (at(r + 1, c + dc) - at(r - 1, c + dc)) for dc, w in ((-1, 1), (0, 2), (1, 1)))
            out[r, c] = min(math.hypot(gx, gy) / (4 * math.sqrt(2)), 1.0)
    return out


def test_sobel_matches_loop() -> None:
    luma = images(count=2, size=9)[:, :1].double()
    luma[1, 0, :, 4:] = 1.0  # a hard edge reaches the largest magnitudes
    luma[1, 0, :, :4] = 0.0
    got = sobel(luma)
    for i in range(2):
        np.testing.assert_allclose(got[i, 0].numpy(), reference_sobel(luma[i, 0].numpy()), atol=1e-12)


def test_gaussian_noise_adds_scaled_noise_and_clamps() -> None:
    batch, noise = images(), torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    stds = torch.linspace(0.0, 0.1, 6)
    got = gaussian_noise(batch, stds, noise)
    for i in range(6):
        expected = np.clip(batch[i].numpy() + stds[i].item() * noise[i].numpy(), 0.0, 1.0)
        np.testing.assert_allclose(got[i].numpy(), expected, atol=1e-6)


def test_rotate90_matches_numpy() -> None:
    batch, turns = images(count=8), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    got = rotate90(batch, turns)
    for i, k in enumerate(turns.tolist()):
        np.testing.assert_array_equal(got[i].numpy(), np.rot90(batch[i].numpy(), k, axes=(1, 2)))


def crops_only() -> AugmentSpec:
    return AugmentSpec(image_size=16, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def uint8_batch() -> torch.Tensor:
    return torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))


def two_views(spec: AugmentSpec, **ops: float) -> tuple[torch.Tensor, torch.Tensor]:
    return BatchAugment(spec, ablation=AblationOps(**ops)).two_views(uint8_batch(), torch.Generator().manual_seed(3))


def test_sobel_option_is_sobel_of_the_crops() -> None:
    crops, _ = two_views(crops_only())
    edges, _ = two_views(crops_only(), sobel_p=1.0)
    torch.testing.assert_close(edges, sobel(rgb_to_grayscale(crops)).expand_as(crops))


@pytest.mark.parametrize("option", ["cutout_p", "noise_p", "rotate_p"])
def test_each_option_changes_every_view(option: str) -> None:
    crops, _ = two_views(crops_only())
    changed, _ = two_views(crops_only(), **{option: 1.0})
    assert all(not torch.equal(a, b) for a, b in zip(changed, crops))


def test_one_branch_leaves_the_second_view_a_plain_crop() -> None:
    """Figure 5's protocol: both views cropped (the same draws), only the first distorted."""
    plain_first, plain_second = two_views(crops_only())
    spec = AugmentSpec(image_size=16, flip_p=0.0, jitter_p=1.0, grayscale_p=1.0)
    first, second = two_views(spec, cutout_p=1.0, one_branch=True)
    torch.testing.assert_close(second, plain_second, rtol=0, atol=0)
    assert all(not torch.equal(a, b) for a, b in zip(first, plain_first))
    assert torch.allclose(first[:, 0], first[:, 1])  # grayscale hit the first view


def test_per_image_views_refuse_ablation_ops(tiny_folder) -> None:  # noqa: ANN001 (a fixture)
    config = PretrainConfig(data=str(tiny_folder), augment_mode="per-image", image_size=16, batch_size=8)
    images = open_images(config.data, "train")
    with pytest.raises(UserError, match="--augment-mode batched"):
        build_view_batches(config, images, [(32, 32)], torch.device("cpu"), rank=0, world=1, ablation=AblationOps(one_branch=True))


def test_ablation_ops_are_not_pretrain_options_and_are_checked() -> None:
    assert not {"cutout_p", "sobel_p", "noise_p", "rotate_p", "one_branch"} & set(vars(PretrainConfig()))
    with pytest.raises(UserError, match="noise_p"):
        AblationOps(noise_p=1.5)
    settings, ops = AblationOps.split({"lr": 0.1, "rotate_p": 1.0, "one_branch": True})
    assert settings == {"lr": 0.1} and ops == AblationOps(rotate_p=1.0, one_branch=True)
