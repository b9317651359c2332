"""The paper's random resized crop over the whole image at its own aspect ratio, on both paths.

The fast path holds each image with its longer side fitted to the stored side, top-left in a padded square, with
its valid size beside it (`data/cache.py`); BatchAugment draws each crop inside its own image. The per-image path
crops the decoded original with torchvision. Both must match RandomResizedCrop.get_params on the original image,
reach every edge of a non-square image, and never show a pixel of padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from test_batched_transforms import assert_same_distribution
from test_transforms import ALL_OFF, one_thread  # noqa: F401
from torchclr.config import PretrainConfig
from torchclr.data.cache import default_stored_size, fit_within, materialize_padded, pad_to
from torchclr.data.sources import open_images
from torchclr.errors import UserError
from torchclr.transforms import AugmentSpec, BatchAugment, view_transform

WIDTH, HEIGHT, VIEW = 40, 30, 16  # a 4:3 image
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
DRAWS = 3000


def coordinate_image(stored: int, padding: int = 255) -> Tensor:
    """A 4:3 uint8 image whose red and green are 4x its x and y, top-left in a stored×stored square of `padding`
    (blue is 0 in the image, `padding` outside: a view with any blue has seen the padding)."""
    xs = torch.arange(WIDTH, dtype=torch.float32).expand(HEIGHT, WIDTH) * 4
    ys = torch.arange(HEIGHT, dtype=torch.float32)[:, None].expand(HEIGHT, WIDTH) * 4
    image = torch.stack((xs, ys, torch.zeros(HEIGHT, WIDTH))).to(torch.uint8)
    out = torch.full((3, stored, stored), padding, dtype=torch.uint8)
    out[:, :HEIGHT, :WIDTH] = image
    return out


def boxes_from_views(views: Tensor) -> Tensor:
    """(left, top, width, height) of each view's crop, read back from the coordinates its pixels hold.

    Sample i of a view sits at left + (i + 1/2)·width/VIEW − 1/2 (pixel centres); the border samples, which the
    resampling clamps at the image's edge, are left out.
    """
    coordinates = views * 255 / 4
    xs, ys = coordinates[:, 0, VIEW // 2, 1:-1], coordinates[:, 1, 1:-1, VIEW // 2]
    extents = torch.stack([(c[:, -1] - c[:, 0]) * VIEW / (VIEW - 3) for c in (xs, ys)], dim=1)
    starts = torch.stack([c[:, 0] + 0.5 - 1.5 * e / VIEW for c, e in zip((xs, ys), extents.T)], dim=1)
    return torch.cat((starts, extents), dim=1).round()


def reference_crops(count: int) -> Tensor:
    """(left, top, width, height) from torchvision's RandomResizedCrop.get_params on the original image."""
    torch.manual_seed(1)
    image = torch.zeros(3, HEIGHT, WIDTH)
    rows = [v2.RandomResizedCrop.get_params(image, list(SCALE), list(RATIO)) for _ in range(count)]
    return torch.tensor([[left, top, width, height] for top, left, height, width in rows], dtype=torch.float32)


def batched_views(stored: int) -> Tensor:
    image = coordinate_image(stored)
    sizes = torch.tensor([[HEIGHT, WIDTH]]).expand(DRAWS, 2)
    spec = AugmentSpec(image_size=VIEW, **{**ALL_OFF, "crop": True})
    return BatchAugment(spec)(image.expand(DRAWS, -1, -1, -1), torch.Generator().manual_seed(0), sizes)


def per_image_views() -> Tensor:
    torch.manual_seed(0)
    transform = view_transform(AugmentSpec(image_size=VIEW, **{**ALL_OFF, "crop": True}))
    original = coordinate_image(WIDTH)[:, :HEIGHT, :WIDTH]
    return torch.stack([transform(original) for _ in range(DRAWS)])


@pytest.mark.parametrize("path", ["batched", "per-image"])
def test_crops_cover_the_whole_4_by_3_image_with_torchvision_s_distribution(path: str) -> None:
    views = batched_views(WIDTH + 8) if path == "batched" else per_image_views()
    assert views[:, 2].max() == 0  # no padding (blue) in any view
    found, expected = boxes_from_views(views), reference_crops(DRAWS)
    left, top, width, height = found.unbind(dim=1)
    assert left.min() == 0 and (left + width).max() == WIDTH  # both side edges are reached
    assert top.min() == 0 and (top + height).max() == HEIGHT
    assert left.min() >= 0 and (left + width).max() <= WIDTH and (top + height).max() <= HEIGHT
    for name, statistic in {
        "area": lambda b: b[:, 2] * b[:, 3] / (WIDTH * HEIGHT),
        "log aspect": lambda b: (b[:, 2] / b[:, 3]).log(),
        "centre x": lambda b: (b[:, 0] + b[:, 2] / 2) / WIDTH,
        "centre y": lambda b: (b[:, 1] + b[:, 3] / 2) / HEIGHT,
    }.items():
        assert_same_distribution(statistic(expected), statistic(found), f"{path}: {name}")


@pytest.mark.parametrize("spec", [
    AugmentSpec(image_size=VIEW, blur_p=0.5, solarize_p=0.0),
    AugmentSpec(image_size=VIEW, crop=False),
    AugmentSpec(image_size=VIEW, crop_scale=(0.01, 0.05)),  # small crops, blown up: samples near every edge
], ids=["all ops", "no crop", "small crops"])
def test_padding_never_reaches_a_view(spec: AugmentSpec) -> None:
    """Images of zeros of several shapes in a square of 255s: every pixel of every view stays 0."""
    shapes = [(30, 40), (40, 12), (7, 40), (40, 40), (25, 25)]
    batch = torch.full((len(shapes), 3, 40, 40), 255, dtype=torch.uint8)
    for image, (height, width) in zip(batch, shapes):
        image[:, :height, :width] = 0
    sizes = torch.tensor(shapes).repeat(80, 1)
    views = BatchAugment(spec)(batch.repeat(80, 1, 1, 1), torch.Generator().manual_seed(0), sizes)
    assert views.max() == 0


def test_no_crop_resizes_each_valid_region_whole() -> None:
    """Without the crop, each image's valid region fills the view: the same view as the image alone, unpadded."""
    spec = AugmentSpec(image_size=VIEW, **ALL_OFF)
    image = coordinate_image(WIDTH + 8, padding=0)
    padded = BatchAugment(spec)(image[None], sizes=torch.tensor([[HEIGHT, WIDTH]]))
    alone = BatchAugment(spec)(image[None, :, :HEIGHT, :WIDTH].contiguous(), sizes=torch.tensor([[HEIGHT, WIDTH]]))
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    left, top, width, height = boxes_from_views(padded)[0].tolist()
    assert (left, top, width, height) == (0, 0, WIDTH, HEIGHT)


def test_default_stored_size_keeps_the_smallest_crop_at_the_view_s_resolution() -> None:
    for view in (32, 96, 224):
        side = default_stored_size(view, SCALE)
        assert side % 8 == 0 and side**2 * SCALE[0] >= view**2  # the smallest crop has at least the view's pixels
        assert (side - 8) ** 2 * SCALE[0] < view**2  # and the side is no larger than that needs
    assert default_stored_size(32, (1.0, 1.0)) == 32
    assert default_stored_size(32, (0.001, 1.0)) == 128  # capped at 4 views


def test_fit_within_keeps_the_aspect_ratio_and_never_upscales() -> None:
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fitted = fit_within(image, 100)
    assert fitted.shape == (3, 75, 100)
    reference = v2.functional.resize(image, [75, 100], antialias=True)
    assert torch.equal(fitted, reference)
    assert fit_within(image, 400) is image and fit_within(image, 1000) is image
    padded = pad_to(fitted, 120)
    assert padded.shape == (3, 120, 120) and torch.equal(padded[:, :75, :100], fitted)
    assert padded[:, 75:].max() == 0 and padded[:, :, 100:].max() == 0


def write_mixed_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate([(80, 60), (30, 90), (20, 20), (64, 64), (100, 10)]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
    return root


def test_materialize_padded_holds_each_image_whole_and_caches_it_by_stored_side(tmp_path: Path) -> None:
    data = write_mixed_folder((tmp_path / "data").mkdir() or tmp_path / "data")
    images = open_images(str(data), "train")
    cache = tmp_path / "cache"
    held = materialize_padded(images, 64, cache)
    assert held.tensor is not None and held.sizes is not None and held.tensor.shape == (5, 3, 64, 64)
    assert held.sizes.tolist() == [[48, 64], [64, 21], [20, 20], [64, 64], [6, 64]]
    for index in range(len(images)):
        height, width = held.sizes[index].tolist()
        assert torch.equal(held.image(index), fit_within(images.image(index), 64))
        assert not held.tensor[index, :, height:].any() and not held.tensor[index, :, :, width:].any()
    again = materialize_padded(open_images(str(data), "train"), 64, cache)  # memory-mapped from the file
    assert torch.equal(again.tensor, held.tensor) and torch.equal(again.sizes, held.sizes)
    assert len(list(cache.glob("*.npy"))) == 2  # the images and their sizes
    smaller = materialize_padded(open_images(str(data), "train"), 32, cache)  # another stored side, another file
    assert smaller.tensor.shape == (5, 3, 32, 32) and len(list(cache.glob("*.npy"))) == 4


def test_equal_square_images_need_no_sizes(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(tmp_path / f"{i}.png")
    held = materialize_padded(open_images(str(tmp_path), "train"), 120)
    assert held.sizes is None and held.tensor.shape == (3, 3, 32, 32)


def test_stored_size_below_the_view_is_a_one_line_error() -> None:
    with pytest.raises(UserError, match="--stored-size 24 is smaller than --image-size 32"):
        PretrainConfig(image_size=32, stored_size=24).validate()
