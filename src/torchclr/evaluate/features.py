"""Frozen representations h for evaluation: the standard centre view of every image, extracted once."""

from __future__ import annotations

import torch
from torch import nn

from torchclr.data.cache import materialize, stored_side
from torchclr.data.sources import ImageSet


def eval_images(images: ImageSet, image_size: int) -> torch.Tensor:
    """uint8 [N, 3, S, S] centre views; small images (<= 64 px) are only resized, never cropped."""
    side = stored_side(image_size)
    held = materialize(images, side).tensor
    assert held is not None
    crop = _centre(side, image_size)
    return held[..., crop, crop]


def _centre(side: int, size: int) -> slice:
    start = (side - size) // 2
    return slice(start, start + size)


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512, autocast_dtype: torch.dtype | None = torch.bfloat16
) -> torch.Tensor:
    """h for every image (float32 [N, d], on the CPU), with the encoder in eval mode (BN running statistics).

    Any network on [0, 1] images will do: given an encoder with a classifier, this returns class scores.
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True).float().div_(255)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)
