"""The reference view family on torchvision.transforms.v2: one image at a time, in data-loader workers."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

from torchclr.errors import UserError
from torchclr.transforms.spec import AugmentSpec


def view_transform(spec: AugmentSpec) -> v2.Compose:
    """One random SimCLR view of a uint8 [3,H,W] tensor or PIL image, as float32 [3,S,S] in [0,1].

    The image goes to float right after the crop (as the paper's code does) so that the colour ops
    do not round to uint8 between steps and the solarize threshold is on the [0,1] scale.
    Ops whose probability is 0 are left out so that they cost nothing. RGB only: the band intensity jitter of
    other channel counts is in the batched path alone.
    """
    if not spec.colour:
        raise UserError(f"the per-image reference views take RGB images; {spec.channels} channels need the batched "
                        "augmentation (--augment-mode batched)")
    size = spec.image_size
    steps: list[Callable[[Any], Any]] = [v2.ToImage()]
    if spec.crop:
        steps.append(v2.RandomResizedCrop(size, scale=spec.crop_scale, ratio=spec.crop_ratio, antialias=True))
    else:
        steps.append(v2.Resize((size, size), antialias=True))
    if spec.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(spec.flip_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if spec.jitter_p > 0 and any(spec.jitter):
        steps.append(v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(spec.grayscale_p))
    if spec.effective_blur_p > 0:
        blur = v2.GaussianBlur(spec.blur_kernel_size, sigma=spec.blur_sigma)
        steps.append(v2.RandomApply([blur], p=spec.effective_blur_p))
    if spec.solarize_p > 0:
        steps.append(v2.RandomSolarize(spec.solarize_threshold, p=spec.solarize_p))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


class TwoViews:
    """The positive pair of SimCLR: two independent draws of one random transform of the same image."""

    def __init__(self, transform: Callable[[Any], Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> tuple[Tensor, Tensor]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"
