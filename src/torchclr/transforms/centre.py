"""The evaluation's centre view, defined once: the deterministic input of the encoder everywhere it is measured or
used (the kNN monitor and linear evaluation, `embed`, `neighbors`, `load_encoder`'s transform, the exported
file's description, the report).

Shorter side to the stored side (the view size up to 64 px, 1/0.875 of it above, ImageNet's resize-256/crop-224),
the central square, then the central crop of the view size; scaled to [0, 1] only at the encoder's door, so that
the evaluation data can be held (or cached) as uint8.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor


def stored_side(image_size: int) -> int:
    """Side of the square evaluation views' store: the view size for small images, 1/0.875 of it for larger ones
    (room for the centre crop, as in ImageNet's resize-256/crop-224)."""
    return image_size if image_size <= 64 else round(image_size / 0.875)


def square(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to `size` and centre-crop a square: the stored evaluation view's shape."""
    if image.shape[-2:] == (size, size):
        return image
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def centre_crop(stored: Tensor, image_size: int) -> Tensor:
    """The central `image_size` square of stored squares [..., side, side], at offset floor((side - size) / 2)."""
    start = (stored.shape[-1] - image_size) // 2
    return stored[..., start : start + image_size, start : start + image_size]


def centre_view(image: Any, image_size: int) -> Tensor:
    """uint8 [3, S, S]: the centre view of a PIL image or uint8 tensor [3, H, W]."""
    return centre_crop(square(TF.to_image(image).as_subclass(Tensor), stored_side(image_size)), image_size)


class CentreView:
    """The evaluation view as the encoder takes it: `centre_view` as float32 [3, S, S] in [0, 1]
    (what `torchclr.load_encoder` hands out with the encoder)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, image: Any) -> Tensor:
        return TF.to_dtype(centre_view(image, self.image_size), torch.float32, scale=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"


def eval_transform(image_size: int) -> CentreView:
    """The evaluation view (see `CentreView`): what `torchclr.load_encoder` hands out with the encoder."""
    return CentreView(image_size)
