"""Frozen representations h for evaluation: the centre view of every image (`transforms.centre`), held or read in
batches, through the one feature extractor that evaluation, `embed`, `neighbors`, the memory plan and the report use.

A small labelled split is decoded once into uint8 centre views; a large one (more than the in-memory share, see
`torchclr.data.plan`) is decoded batch by batch in DataLoader workers each time, so no evaluation holds O(data
set) images. Both give the same pixels.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchclr.data.cache import materialize
from torchclr.data.sources import ImageSet
from torchclr.errors import UserError
from torchclr.runtime import default_workers, resolve_dtype
from torchclr.transforms.centre import centre_crop, centre_view, stored_side


def eval_images(images: ImageSet, image_size: int) -> torch.Tensor:
    """uint8 [N, 3, S, S] centre views; small images (<= 64 px) are only resized, never cropped. Files that fail to
    decode are left out (and recorded in `images.skipped`): see `held_eval_set` for the labels that remain."""
    return held_eval_set(images, image_size)[1]


def held_eval_set(images: ImageSet, image_size: int) -> tuple[ImageSet, torch.Tensor]:
    """The set without the files that fail to decode (its labels then still match the views), and its centre views."""
    held = materialize(images, stored_side(image_size))
    assert held.tensor is not None
    return held, centre_crop(held.tensor, image_size)


class CentreViews(Dataset):
    """The centre view of image i, decoded on demand: the same pixels as `eval_images` holds."""

    def __init__(self, images: ImageSet, image_size: int) -> None:
        self.images, self.image_size = images, image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return centre_view(self.images.image(index), self.image_size)


class DecodedCentreViews(CentreViews):
    """(centre view, whether its file decoded) of image i: a broken file gives a blank view, for the caller to skip,
    so that one bad file among many costs its row and not the run (`embed`)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:  # type: ignore[override]
        try:
            return super().__getitem__(index), True
        except UserError:
            return torch.zeros(self.images.policy.channels, self.image_size, self.image_size, dtype=torch.uint8), False


def streamed_views(images: ImageSet, image_size: int, indices: torch.Tensor, batch_size: int = 256,
                   workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 batch of the centre views of `indices`, in that order, whether each file decoded), decoded by
    DataLoader workers: a file that fails gives a blank view for the caller to leave out (`DecodedCentreViews`)."""
    loader = DataLoader(DecodedCentreViews(images, image_size), batch_size=batch_size, sampler=indices.tolist(),
                        num_workers=default_workers() if workers is None else workers)
    yield from loader


@torch.no_grad()
def batch_features(network: nn.Module, batch: torch.Tensor, device: torch.device,
                   autocast_dtype: torch.dtype | None | str = "auto") -> torch.Tensor:
    """The network's output (float32, on the CPU) for one batch of images, in the mode the network is in.

    uint8 images are scaled to [0, 1] as `transforms.centre.CentreView` scales them; float images are taken as
    already in [0, 1] (e.g. augmented views).
    """
    autocast_dtype = resolve_dtype(autocast_dtype, device)  # 'auto': bf16 where it is native
    scale = 1 / 255 if batch.dtype == torch.uint8 else 1.0
    batch = batch.to(device, non_blocking=True).float().mul_(scale).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return network(batch).float().cpu()


def extract_features(
    encoder: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], device: torch.device, batch_size: int = 512,
    autocast_dtype: torch.dtype | None | str = "auto",
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
    try:
        return torch.cat([batch_features(encoder, batch, device, autocast_dtype) for batch in batches])
    finally:
        encoder.train(was_training)
