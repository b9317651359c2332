"""Frozen representations h for evaluation: the standard centre view of every image, held or read in batches.

A small labelled split is decoded once into uint8 centre views; a large one (more than the in-memory share, see
`torchclr.data.plan`) is decoded batch by batch in DataLoader workers each time, so no evaluation holds O(data
set) images. Both give the same pixels.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchclr.data.cache import materialize, square, stored_side
from torchclr.data.loaders import default_workers
from torchclr.data.sources import ImageSet


def _centre(side: int, size: int) -> slice:
    start = (side - size) // 2
    return slice(start, start + size)


def eval_images(images: ImageSet, image_size: int) -> torch.Tensor:
    """uint8 [N, 3, S, S] centre views; small images (<= 64 px) are only resized, never cropped."""
    side = stored_side(image_size)
    held = materialize(images, side).tensor
    assert held is not None
    crop = _centre(side, image_size)
    return held[..., crop, crop]


class CentreViews(Dataset):
    """The centre view of image i, decoded on demand: the same pixels as `eval_images` holds."""

    def __init__(self, images: ImageSet, image_size: int) -> None:
        self.images, self.image_size, self.side = images, image_size, stored_side(image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        crop = _centre(self.side, self.image_size)
        return square(self.images.image(index), self.side)[..., crop, crop]


def streamed_views(images: ImageSet, image_size: int, indices: torch.Tensor, batch_size: int = 256,
                   workers: int | None = None) -> Iterator[torch.Tensor]:
    """uint8 batches of the centre views of `indices`, in that order, decoded by DataLoader workers."""
    loader = DataLoader(CentreViews(images, image_size), batch_size=batch_size, sampler=indices.tolist(),
                        num_workers=default_workers() if workers is None else workers)
    yield from loader


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], device: torch.device, batch_size: int = 512,
    autocast_dtype: torch.dtype | None = torch.bfloat16,
) -> torch.Tensor:
    """h for every image (float32 [N, d], on the CPU), with the encoder in eval mode (BN running statistics).

    `images`: a uint8 tensor [N, 3, S, S], or uint8 batches of it (e.g. from `streamed_views`); float images are
    taken as already in [0, 1] (e.g. augmented views).
    Any network on [0, 1] images will do: given an encoder with a classifier, this returns class scores.
    """
    batches = (images[start : start + batch_size] for start in range(0, len(images), batch_size)) \
        if isinstance(images, torch.Tensor) else images
    was_training = encoder.training
    encoder.eval()
    out = []
    for batch in batches:
        scale = 1 / 255 if batch.dtype == torch.uint8 else 1.0
        batch = batch.to(device, non_blocking=True).float().mul_(scale).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)
