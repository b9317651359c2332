"""The two views of an image are independent draws of the view family: over many images, every random parameter of
view 2 (crop box, flip, jitter factors and order, grayscale) is uncorrelated with the same parameter of view 1.

Under independence sqrt(n) x Pearson's r is about standard normal, so |r| < 4 / sqrt(n) holds with probability
1 - 6e-5 per parameter; the seeds are fixed, so the test is deterministic. Views that reused one draw would give r = 1.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from torchvision.transforms import v2

from torchclr.transforms import AugmentSpec, BatchAugment, TwoViews, view_transform
from torchclr.transforms import batched

SIDE = 16
SPEC = AugmentSpec(image_size=SIDE, jitter_strength=1.0, blur_p=0.0)


def assert_uncorrelated(name: str, first: torch.Tensor, second: torch.Tensor) -> None:
    first, second = first.double().flatten(), second.double().flatten()
    assert first.std() > 0 and second.std() > 0, f"{name}: the parameter does not vary between images"
    r = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    assert abs(r) < 4 / math.sqrt(len(first)), f"{name}: views 1 and 2 correlate (r = {r:.3f} over {len(first)} images)"


def test_batched_views_draw_every_parameter_independently(monkeypatch: pytest.MonkeyPatch) -> None:
    """`BatchAugment.two_views` draws one batch of 2n views: rows i and n + i are the two views of image i."""
    drawn: dict[str, torch.Tensor] = {}
    sample_boxes, jitter, apply_where = batched.sample_crop_boxes, BatchAugment.jitter, batched._apply_where

    def record_boxes(*args: Any, **kwargs: Any) -> torch.Tensor:
        drawn["boxes"] = sample_boxes(*args, **kwargs)
        return drawn["boxes"]

    def record_jitter(self: BatchAugment, images: torch.Tensor, applied: torch.Tensor, factors: torch.Tensor,
                      order: torch.Tensor, masked: bool) -> torch.Tensor:
        drawn.update(jitter_applied=applied, factors=factors, first_op=order[:, 0])
        return jitter(self, images, applied, factors, order, masked)

    def record_choice(images: torch.Tensor, chosen: torch.Tensor, op: Callable, *per_image: torch.Tensor, masked: bool) -> torch.Tensor:
        names = {batched._flip: "flip", batched._grayscale_rgb: "grayscale"}
        if op in names:
            drawn[names[op]] = chosen
        return apply_where(images, chosen, op, *per_image, masked=masked)

    monkeypatch.setattr(batched, "sample_crop_boxes", record_boxes)
    monkeypatch.setattr(BatchAugment, "jitter", record_jitter)
    monkeypatch.setattr(batched, "_apply_where", record_choice)
    n = 4000
    images = torch.randint(0, 256, (n, 3, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    BatchAugment(SPEC).two_views(images, torch.Generator().manual_seed(1))

    boxes = drawn["boxes"]
    sizes = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1)
    for column, name in enumerate(("crop left", "crop top", "crop width", "crop height")):
        assert_uncorrelated(name, sizes[:n, column], sizes[n:, column])
    for column, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        assert_uncorrelated(name, drawn["factors"][:n, column], drawn["factors"][n:, column])
    for name in ("jitter_applied", "first_op", "flip", "grayscale"):
        assert_uncorrelated(name, drawn[name][:n], drawn[name][n:])


@pytest.mark.slow
def test_per_image_views_draw_every_parameter_independently(monkeypatch: pytest.MonkeyPatch) -> None:
    """`TwoViews(view_transform(spec))`, the per-image reference: the crop of every view, and the jitter factors
    where both views were jittered (torchvision draws them only then)."""
    views: list[dict[str, Any]] = []
    make_crop, make_jitter = v2.RandomResizedCrop.make_params, v2.ColorJitter.make_params

    def record(make: Callable) -> Callable:
        def wrapped(self: Any, flat_inputs: list[Any]) -> dict[str, Any]:
            params = make(self, flat_inputs)
            views[-1].update(params)
            return params
        return wrapped

    monkeypatch.setattr(v2.RandomResizedCrop, "make_params", record(make_crop))
    monkeypatch.setattr(v2.ColorJitter, "make_params", record(make_jitter))
    transform = view_transform(SPEC)

    def one_view(image: torch.Tensor) -> torch.Tensor:
        views.append({})
        return transform(image)

    pair = TwoViews(one_view)
    torch.manual_seed(0)
    n = 1500
    for image in torch.randint(0, 256, (n, 3, SIDE, SIDE), dtype=torch.uint8):
        pair(image)
    first, second = views[0::2], views[1::2]
    for key in ("left", "top", "width", "height"):
        assert_uncorrelated(f"crop {key}", torch.tensor([v[key] for v in first]), torch.tensor([v[key] for v in second]))
    both = [(a, b) for a, b in zip(first, second) if "brightness_factor" in a and "brightness_factor" in b]
    assert len(both) > 0.5 * n  # jitter p = 0.8 for each view
    for key in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"):
        assert_uncorrelated(key, torch.tensor([a[key] for a, _ in both]), torch.tensor([b[key] for _, b in both]))
    assert_uncorrelated("first jitter op", torch.tensor([a["fn_idx"][0] for a, _ in both]), torch.tensor([b["fn_idx"][0] for _, b in both]))
