"""The view family's contract, for the v2 reference and the batched fast path alike.

The statistics are seeded, so they are deterministic; their tolerances are four binomial standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from torchclr.transforms import AugmentSpec, BatchAugment, TwoViews, eval_transform, view_transform
from torchclr.transforms.batched import sample_crop_boxes

DRAWS = 2000
IMPLEMENTATIONS = ("v2", "batched")
ALL_OFF = dict(crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One image at a time is tiny work: a second intra-op thread on a busy 2-core machine makes it ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def only(image_size: int = 16, **enabled: object) -> AugmentSpec:
    """A spec with every op off but the given ones, so that each op's effect can be told apart exactly."""
    return AugmentSpec(image_size=image_size, **{**ALL_OFF, **enabled})


def noise_image(size: int, seed: int = 0) -> Tensor:
    """A colourful, left-right asymmetric uint8 image [3,size,size] with pixels on both sides of 0.5."""
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def draw_views(implementation: str, spec: AugmentSpec, image: Tensor, count: int, seed: int = 0) -> Tensor:
    """count views [count,3,S,S] of one image, drawn one by one (v2) or as one batch (batched)."""
    if implementation == "v2":
        torch.manual_seed(seed)
        transform = view_transform(spec)
        return torch.stack([transform(image) for _ in range(count)])
    batch = image.expand(count, -1, -1, -1)
    return BatchAugment(spec)(batch, torch.Generator().manual_seed(seed))


def pipeline_ops(spec: AugmentSpec) -> list[object]:
    """The ops of view_transform(spec), with those inside RandomApply taken out."""
    return [op for step in view_transform(spec).transforms for op in getattr(step, "transforms", [step])]


def as_float(image: Tensor) -> Tensor:
    return v2.functional.to_dtype(image, torch.float32, scale=True)


def assert_share(applied: Tensor, expected: float) -> None:
    share = applied.float().mean().item()
    tolerance = 4 * math.sqrt(expected * (1 - expected) / len(applied))
    assert abs(share - expected) <= tolerance, f"share {share:.4f}, expected {expected} ± {tolerance:.4f}"


def changed(views: Tensor, original: Tensor) -> Tensor:
    return (views != original).flatten(1).any(dim=1)


def grayscale(image: Tensor) -> Tensor:
    red, green, blue = image.unbind(dim=-3)
    return (0.2989 * red + 0.587 * green + 0.114 * blue).unsqueeze(-3).expand_as(image)


# Each case: the only op on, its probability, and what an applied view must equal (None: just different).
SHARE_CASES = {
    "flip": (dict(flip_p=0.5), 0.5, lambda image: image.flip(-1)),
    "grayscale": (dict(grayscale_p=0.2), 0.2, grayscale),
    "jitter": (dict(jitter_p=0.8), 0.8, None),
    "solarize": (dict(solarize_p=0.3), 0.3, lambda image: torch.where(image >= 0.5, 1 - image, image)),
}


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", SHARE_CASES)
def test_each_op_is_applied_to_its_share_of_views(implementation: str, case: str) -> None:
    enabled, probability, expected = SHARE_CASES[case]
    image = noise_image(16)
    original = as_float(image)
    views = draw_views(implementation, only(**enabled), image, DRAWS)
    applied = changed(views, original)
    assert_share(applied, probability)
    assert torch.equal(views[~applied], original.expand_as(views[~applied]))
    if expected is not None:
        torch.testing.assert_close(views[applied], expected(original).expand_as(views[applied]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(("image_size", "blurred_share"), [(96, 0.5), (32, 0.0)])
def test_blur_is_on_by_default_for_96_px_and_off_for_32_px(
    implementation: str, image_size: int, blurred_share: float
) -> None:
    spec = only(image_size, blur_p=None)
    image = noise_image(image_size)
    assert_share(changed(draw_views(implementation, spec, image, DRAWS), as_float(image)), blurred_share)


def test_blur_kernel_is_about_a_tenth_of_the_side() -> None:
    assert [AugmentSpec(image_size=s).blur_kernel_size for s in (32, 96, 224)] == [3, 11, 23]
    blurs = [op for op in pipeline_ops(AugmentSpec(image_size=96)) if isinstance(op, v2.GaussianBlur)]
    assert [blur.kernel_size for blur in blurs] == [(11, 11)]
    assert not any(isinstance(op, v2.GaussianBlur) for op in pipeline_ops(AugmentSpec(image_size=32)))


def test_disabled_ops_are_left_out_of_the_pipeline() -> None:
    expected = [v2.ToImage, v2.RandomResizedCrop, v2.ToDtype, v2.ToPureTensor]
    assert [type(op) for op in pipeline_ops(only(crop=True))] == expected


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_crop_boxes_keep_the_spec_area_and_aspect_ratio(implementation: str) -> None:
    spec = AugmentSpec(image_size=32)
    height, width = 224, 224
    if implementation == "v2":
        torch.manual_seed(0)
        crop = next(op for op in pipeline_ops(spec) if isinstance(op, v2.RandomResizedCrop))
        image = torch.zeros(3, height, width, dtype=torch.uint8)
        boxes = [crop.make_params([image]) for _ in range(DRAWS)]
        widths = torch.tensor([float(b["width"]) for b in boxes])
        heights = torch.tensor([float(b["height"]) for b in boxes])
    else:
        generator = torch.Generator().manual_seed(0)
        boxes = sample_crop_boxes(DRAWS, height, width, spec.crop_scale, spec.crop_ratio, generator=generator)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    areas = widths * heights / (height * width)
    aspects = widths / heights
    # Rounding the sides to whole pixels may step just past the bounds (by < 1 px per side).
    assert areas.min() >= 0.08 * (1 - 2 / math.sqrt(0.08 * height * width)) and areas.max() <= 1
    assert areas.min() < 0.1 and areas.max() > 0.95
    assert aspects.min() >= 3 / 4 - 0.02 and aspects.max() <= 4 / 3 + 0.02


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_same_seed_gives_the_same_views(implementation: str) -> None:
    spec = AugmentSpec(image_size=32)
    image = noise_image(40)
    first = draw_views(implementation, spec, image, 8, seed=1)
    assert torch.equal(first, draw_views(implementation, spec, image, 8, seed=1))
    assert not torch.equal(first, draw_views(implementation, spec, image, 8, seed=2))


def test_two_views_of_one_image_differ() -> None:
    spec = AugmentSpec(image_size=32)
    image = noise_image(32)
    torch.manual_seed(0)
    first, second = TwoViews(view_transform(spec))(image)
    assert first.shape == second.shape == (3, 32, 32)
    assert not torch.equal(first, second)
    batch = torch.stack([noise_image(32, seed) for seed in range(16)])
    first, second = BatchAugment(spec).two_views(batch, torch.Generator().manual_seed(0))
    assert first.shape == second.shape == (16, 3, 32, 32)
    assert changed(first, second).all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_views_are_float_in_unit_range_at_the_spec_size(implementation: str) -> None:
    spec = AugmentSpec(image_size=24, blur_p=0.5, solarize_p=0.2)
    image = torch.randint(0, 256, (3, 30, 45), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = draw_views(implementation, spec, image, 64)
    assert type(views) is Tensor and views.dtype == torch.float32 and views.shape == (64, 3, 24, 24)
    assert views.min() >= 0 and views.max() <= 1
    assert views.std() > 0.05


def test_view_transform_takes_pil_images() -> None:
    image = Image.fromarray(noise_image(40).permute(1, 2, 0).numpy())
    view = view_transform(AugmentSpec(image_size=32))(image)
    assert type(view) is Tensor and view.dtype == torch.float32 and view.shape == (3, 32, 32)


def test_no_crop_resizes_the_whole_image_to_a_square() -> None:
    image = noise_image(20)[:, :, :15]
    assert view_transform(only(crop=False))(image).shape == (3, 16, 16)
    assert BatchAugment(only(crop=False))(image[None]).shape == (1, 3, 16, 16)


def test_eval_transform_is_identity_at_its_size_and_center_crops_otherwise() -> None:
    image = noise_image(32)
    assert torch.equal(eval_transform(32)(image), as_float(image))
    wide = torch.zeros(3, 40, 80, dtype=torch.uint8)
    wide[:, :, 16:64] = 255  # the central half, with a margin for the resize filter
    view = eval_transform(32)(wide)
    assert type(view) is Tensor and view.dtype == torch.float32 and view.shape == (3, 32, 32)
    assert torch.equal(view, torch.ones_like(view))
