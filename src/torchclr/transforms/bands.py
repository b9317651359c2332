"""Intensity jitter for images that are not RGB (`--in-channels` other than 3): hue, saturation and grayscale
have no meaning for a microscope's stains or a satellite's bands, but the overall intensity and contrast of each
band vary between acquisitions, which is what a view should not change the representation for.

Each band of each image gets its own brightness factor (scale) and contrast factor (blend with the band's mean),
drawn from the colour jitter's brightness and contrast ranges, applied in a random order per image, as
torchvision's ColorJitter orders its ops. Images [N, C, H, W] in [0, 1]; clamped to [0, 1] after each op.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _per_band(factors: Tensor) -> Tensor:
    """[N, C] factors shaped to broadcast over [N, C, H, W]."""
    return factors[:, :, None, None]


def adjust_band_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Scale band c of image i by factors[i, c]."""
    return images.mul(_per_band(factors)).clamp_(0.0, 1.0)


def adjust_band_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend band c of image i with its own mean by factors[i, c] (1 leaves it, 0 makes it flat)."""
    means = images.mean(dim=(2, 3), keepdim=True)
    return torch.lerp(means, images, _per_band(factors)).clamp_(0.0, 1.0)


def intensity_jitter(images: Tensor, applied: Tensor, brightness: Tensor, contrast: Tensor,
                     brightness_first: Tensor) -> Tensor:
    """The `applied` images [N] with per-band `brightness` and `contrast` factors [N, C], brightness first where
    `brightness_first` [N]; the others unchanged. Both orders are computed and chosen by mask: no selection, so
    the device never waits for the host (the ops are cheap next to the encoder)."""
    then_contrast = adjust_band_contrast(adjust_band_brightness(images, brightness), contrast)
    then_brightness = adjust_band_brightness(adjust_band_contrast(images, contrast), brightness)
    jittered = torch.where(brightness_first[:, None, None, None], then_contrast, then_brightness)
    return torch.where(applied[:, None, None, None], jittered, images)
