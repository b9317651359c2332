"""BatchAugment against the v2 reference: the same distributions of views, and each op equal to torchvision's.

Shares and determinism of both implementations are tested in test_transforms.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from test_transforms import DRAWS, as_float, assert_share, draw_views, noise_image, one_thread, only  # noqa: F401
from torchclr.transforms import AugmentSpec, BatchAugment, view_transform
from torchclr.transforms.batched import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    rgb_to_grayscale,
    sample_crop_boxes,
)

KS_CRITICAL = 1.95  # two-sample Kolmogorov–Smirnov at significance 0.001
Z_CRITICAL = 4.5  # for differences of means: seeded, and far from flaky


def ks_distance(first: Tensor, second: Tensor) -> float:
    """The largest gap between the two empirical distribution functions."""
    values = torch.cat((first, second))
    cdfs = [torch.searchsorted(sample.sort().values, values, right=True) / len(sample) for sample in (first, second)]
    return (cdfs[0] - cdfs[1]).abs().max().item()


def assert_same_distribution(first: Tensor, second: Tensor, name: str) -> None:
    """Two samples alike: their KS distance below the critical value, their means within Z_CRITICAL errors."""
    n, m = len(first), len(second)
    limit = KS_CRITICAL * math.sqrt((n + m) / (n * m))
    distance = ks_distance(first, second)
    assert distance <= limit, f"{name}: KS distance {distance:.4f} > {limit:.4f}"
    error = math.sqrt(first.var().item() / n + second.var().item() / m)
    gap = abs(first.mean().item() - second.mean().item())
    assert gap <= Z_CRITICAL * error, f"{name}: means {gap:.4g} apart, more than {Z_CRITICAL} x {error:.4g}"


def textured_images(count: int = 48, size: int = 16) -> Tensor:
    """Colourful natural-looking uint8 images: a tinted gradient, a wavy texture and a disc, a few pixels clipped."""
    generator = torch.Generator().manual_seed(0)

    def per_image(channels: int = 1) -> Tensor:
        return torch.rand(count, channels, 1, 1, generator=generator)

    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    angle = per_image() * 2 * math.pi
    gradient = (per_image(3) - 0.5) * (xs * angle.cos() + ys * angle.sin())
    waves = torch.sin(2 * math.pi * (per_image() * 4 * xs + per_image() * 4 * ys) + per_image(3) * 6)
    disc = (xs - per_image()) ** 2 + (ys - per_image()) ** 2 < 0.05
    pixels = 0.15 + 0.6 * per_image(3) + 0.4 * gradient + 0.1 * per_image(3) * waves + disc * (per_image(3) - 0.5)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8)


def colour_statistics(views: Tensor) -> dict[str, Tensor]:
    """Per view: the channel moments, and a measure moved by each jitter factor alone (clipping and hue aside).

    Brightness scales luma; contrast scales luma deviations; saturation scales chroma against luma deviations.
    """
    red, green, blue = views.unbind(dim=1)
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    luma_mean, luma_spread = luma.mean(dim=(1, 2)), luma.std(dim=(1, 2))
    chroma = (views - luma.unsqueeze(1)).square().mean(dim=(1, 2, 3)).sqrt()
    opponent = ((red - green).mean(dim=(1, 2)), (red + green - 2 * blue).mean(dim=(1, 2)) / math.sqrt(3))
    means, variances = views.mean(dim=(2, 3)), views.var(dim=(2, 3))
    return {
        **{f"{channel} mean": means[:, c] for c, channel in enumerate(("red", "green", "blue"))},
        **{f"{channel} variance": variances[:, c] for c, channel in enumerate(("red", "green", "blue"))},
        "brightness": luma_mean.log(),
        "contrast": (luma_spread / luma_mean).log(),
        "saturation": (chroma / luma_spread).log(),
        "hue": torch.atan2(opponent[1], opponent[0]),
    }


@pytest.mark.parametrize(("height", "width"), [(48, 64), (16, 64)])
def test_crop_boxes_follow_random_resized_crop(height: int, width: int) -> None:
    ratio = (3 / 4, 4 / 3)
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(16, scale=(0.08, 1.0), ratio=ratio)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    drawn = [crop.make_params([image]) for _ in range(DRAWS)]
    reference = torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]] for p in drawn])
    generator = torch.Generator().manual_seed(0)
    batched = sample_crop_boxes(2 * DRAWS, height, width, (0.08, 1.0), ratio, generator=generator)
    assert batched.min() >= 0 and (batched[:, 2] <= width).all() and (batched[:, 3] <= height).all()
    assert torch.equal(batched, batched.round())
    for name, statistic in {
        "area": lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (height * width),
        "log aspect": lambda b: ((b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])).log(),
        "centre x": lambda b: (b[:, 0] + b[:, 2]) / (2 * width),
        "centre y": lambda b: (b[:, 1] + b[:, 3]) / (2 * height),
    }.items():
        assert_same_distribution(statistic(reference), statistic(batched), name)


def test_crops_land_where_v2_crops_land() -> None:
    """On an image whose red and green encode x and y, the views tell the crop boxes back, for both paths."""
    size, out = 64, 16
    ramp = torch.arange(size, dtype=torch.float32) * 4
    image = torch.stack((ramp.expand(size, size), ramp[:, None].expand(size, size), torch.zeros(size, size)))
    image = image.to(torch.uint8)
    spec = only(out, crop=True)
    boxes = []
    for implementation in ("v2", "batched"):
        views = draw_views(implementation, spec, image, DRAWS) * 255 / 4  # pixel coordinates of the samples
        # Inside a view, sample i sits at start + (i + 1/2)·extent/out − 1/2; the border samples are left out.
        xs, ys = views[:, 0, out // 2, 1:-1], views[:, 1, 1:-1, out // 2]
        extents = torch.stack([(c[:, -1] - c[:, 0]) * out / (out - 3) for c in (xs, ys)], dim=1)
        starts = torch.stack([c[:, 0] + 0.5 - 1.5 * e / out for c, e in zip((xs, ys), extents.T)], dim=1)
        boxes.append(torch.cat((starts, extents), dim=1))
    reference, batched = boxes
    # The batched path samples its whole-pixel boxes exactly; v2 rounds to uint8 on the way, by < 0.4 px here.
    torch.testing.assert_close(batched, batched.round(), rtol=0, atol=1e-3)
    reference, batched = reference.round(), batched.round()
    for box in (reference, batched):
        assert box[:, :2].min() >= 0 and (box[:, :2] + box[:, 2:]).max() <= size
    area = [box[:, 2] * box[:, 3] / size**2 for box in (reference, batched)]
    assert area[1].min() >= 0.075 and area[1].max() <= 1
    assert_same_distribution(area[0], area[1], "area")
    assert_same_distribution(reference[:, 0], batched[:, 0], "left")
    assert_same_distribution(reference[:, 1], batched[:, 1], "top")


@pytest.mark.parametrize(
    "spec",
    [only(16, jitter_p=0.8), AugmentSpec(image_size=16)],
    ids=["jitter only", "default"],
)
@pytest.mark.slow
def test_colour_statistics_follow_v2(spec: AugmentSpec) -> None:
    images = textured_images()
    # Twice the usual draws from v2 and four times as many again from the cheap batched path, so that
    # a jitter range 25% off shows; every image is drawn equally often in both.
    batch = images.repeat(2 * DRAWS // len(images) + 1, 1, 1, 1)
    torch.manual_seed(0)
    transform = view_transform(spec)
    reference = torch.stack([transform(image) for image in batch])
    batched = BatchAugment(spec)(batch.repeat(4, 1, 1, 1), torch.Generator().manual_seed(0))
    # Changes from each view's own image, so that the spread between images does not hide a bias.
    before = colour_statistics(as_float(batch))
    after = [colour_statistics(views) for views in (reference, batched)]
    for name, value in before.items():
        assert_same_distribution(after[0][name] - value, after[1][name] - value.repeat(4), f"{spec}: {name}")


def test_jitter_order_is_drawn_per_image() -> None:
    """80% of the images are jittered, each with its own order of the four ops: all 24 orders about equally often."""
    count = 4800
    augment = BatchAugment(only(8, jitter_p=0.8))
    plans: list[tuple[Tensor, Tensor]] = []
    jitter = augment.jitter

    def record(images: Tensor, applied: Tensor, factors: Tensor, order: Tensor, masked: bool) -> Tensor:
        plans.append((applied, order))
        return jitter(images, applied, factors, order, masked)

    augment.jitter = record  # type: ignore[method-assign]
    augment(torch.rand(count, 3, 8, 8), torch.Generator().manual_seed(0))
    (applied, order), = plans
    assert_share(applied, 0.8)
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    codes = (order[applied] * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    counts = torch.unique(codes, return_counts=True)[1].float()
    expected = applied.sum() / 24
    assert len(counts) == 24 and ((counts - expected) ** 2 / expected).sum() < 49.7  # chi-square, 23 dof, 0.001


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "selected"])
def test_jitter_applies_each_images_ops_in_its_own_order_as_torchvision(masked: bool) -> None:
    """Image i meets op order[i, p] at step p with its own factor; the images not applied are left exactly alone."""
    images = colour_batch().repeat(3, 1, 1, 1)
    count = len(images)
    generator = torch.Generator().manual_seed(1)
    augment = BatchAugment(only(12, jitter_p=0.8, jitter_strength=1.0))
    applied = torch.arange(count) % 4 != 0
    factors = torch.stack([torch.empty(count).uniform_(low, high, generator=generator)
                           for _, low, high, _ in augment._jitter_ops], dim=1)
    order = torch.rand(count, 4, generator=generator).argsort(dim=1)
    out = augment.jitter(images.clone(), applied, factors, order, masked)
    reference_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(count):
        expected = images[i]
        if applied[i]:
            for op_index in order[i].tolist():
                expected = reference_ops[op_index](expected, factors[i, op_index].item())
        torch.testing.assert_close(out[i], expected, rtol=0, atol=2e-5 if applied[i] else 0)


OPS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, float], Tensor], tuple[float, float]]] = {
    "brightness": (adjust_brightness, TF.adjust_brightness, (0.0, 2.0)),
    "contrast": (adjust_contrast, TF.adjust_contrast, (0.0, 2.0)),
    "saturation": (adjust_saturation, TF.adjust_saturation, (0.0, 2.0)),
    "hue": (adjust_hue, TF.adjust_hue, (-0.5, 0.5)),
    "blur": (
        lambda images, sigmas: gaussian_blur(images, sigmas, 5),
        lambda image, sigma: TF.gaussian_blur(image, [5, 5], [sigma, sigma]),
        (0.1, 2.0),
    ),
}


def colour_batch() -> Tensor:
    """Float images with grays, ties between channels, saturated and clipped pixels."""
    images = as_float(torch.cat((textured_images(8, 12), noise_image(12)[None])))
    images[0, :, :4] = images[0, :1, :4]  # grays
    images[1, 1] = images[1, 0]  # red and green tied
    return images


@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_torchvision_on_every_image(op: str) -> None:
    batched, reference, (low, high) = OPS[op]
    images = colour_batch()
    factors = torch.linspace(low, high, len(images))
    out = batched(images, factors)
    for image, factor, result in zip(images, factors.tolist(), out):
        torch.testing.assert_close(result, reference(image, factor), rtol=0, atol=1e-5)


def test_grayscale_matches_torchvision() -> None:
    images = colour_batch()
    torch.testing.assert_close(rgb_to_grayscale(images), TF.rgb_to_grayscale(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_factor_one_is_identity(op: str) -> None:
    images = colour_batch()
    torch.testing.assert_close(OPS[op][0](images, torch.ones(len(images))), images, rtol=0, atol=1e-6)


def test_hue_shift_by_zero_is_identity_and_by_half_twice_returns() -> None:
    images = colour_batch()
    zero, half = torch.zeros(len(images)), torch.full((len(images),), 0.5)
    torch.testing.assert_close(adjust_hue(images, zero), images, rtol=0, atol=1e-5)
    torch.testing.assert_close(adjust_hue(adjust_hue(images, half), half), images, rtol=0, atol=1 / 255)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_batch_gives_float_views_on_its_device(device: str) -> None:
    spec = AugmentSpec(image_size=24, blur_p=0.5, solarize_p=0.2)
    images = textured_images(8, 32).to(device)
    views = BatchAugment(spec)(images, torch.Generator(device).manual_seed(0))
    assert views.device == images.device and views.dtype == torch.float32 and views.shape == (8, 3, 24, 24)
    assert views.min() >= 0 and views.max() <= 1
    first, second = BatchAugment(spec).two_views(images)
    assert first.device == second.device == images.device and first.shape == second.shape == (8, 3, 24, 24)


def test_float_input_gives_the_views_of_the_uint8_input_and_is_left_alone() -> None:
    spec = AugmentSpec(image_size=16)
    images = textured_images(8, 16)
    floats = as_float(images)
    kept = floats.clone()
    augment = BatchAugment(spec)
    from_uint8 = augment(images, torch.Generator().manual_seed(3))
    torch.testing.assert_close(augment(floats, torch.Generator().manual_seed(3)), from_uint8, rtol=0, atol=1e-5)
    augment = BatchAugment(only(16))
    torch.testing.assert_close(augment(floats), floats, rtol=0, atol=0)
    augment(floats).zero_()
    assert torch.equal(floats, kept)


def test_masked_and_selected_ops_give_the_same_views() -> None:
    """The sync-free path (masks, what a GPU runs) and the selecting one (the CPU's) draw the same numbers and
    make the same views, every op of the family on."""
    spec = AugmentSpec(image_size=24, blur_p=0.5, solarize_p=0.3)
    images = torch.randint(0, 256, (32, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    masked = BatchAugment(spec, sync_free=True).two_views(images, torch.Generator().manual_seed(0))
    selected = BatchAugment(spec, sync_free=False).two_views(images, torch.Generator().manual_seed(0))
    for one, other in zip(masked, selected):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-5)


def test_blur_of_a_white_image_stays_in_range() -> None:
    """The taps sum to 1 only up to rounding; the view must not leave [0, 1] (hypothesis found 1 + 2e-7)."""
    sigmas = torch.linspace(0.1, 2.0, 400)  # unclamped, 47 of these came out above 1 with 3 taps
    white = torch.ones(len(sigmas), 3, 8, 8)
    blurred = gaussian_blur(white, sigmas, 3)
    assert blurred.max() <= 1.0 and torch.allclose(blurred, white, atol=1e-6)
