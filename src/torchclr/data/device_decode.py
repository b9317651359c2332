"""JPEG decoding on the training device, a batch at a time (nvJPEG on a GPU through `torchvision.io.decode_jpeg`).

At ImageNet scale, DataLoader workers decoding full-size JPEGs (even in PIL's draft mode) feed a fast GPU more
slowly than it trains. With `--decode device`, workers only read each JPEG's bytes and check its header; the main
process decodes the whole batch in one call on the device, fits each image within the stored side there, and pads
the batch with the same `pad_batch` as the worker path. Images that are not JPEGs, or so large that decoding them
whole would be wasteful (over `DRAFT_ABOVE` x the stored side), are still decoded in the worker, in draft mode.
On the CPU the same functions run with device "cpu" (what the tests exercise), which is never faster than workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchclr.data.cache import fit_within
from torchclr.data.reader import decode_jpegs, is_jpeg_at_most
from torchclr.data.skips import ReadPolicy

DRAFT_ABOVE = 4  # a JPEG whose longer side exceeds this many stored sides is decoded in the worker, in draft mode


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG's bytes as a uint8 tensor (pinned and copied like any batch tensor) and the name that reports it."""

    data: torch.Tensor
    where: str

    def pin_memory(self) -> EncodedJpeg:  # DataLoader's pin_memory calls this on objects it does not know
        return EncodedJpeg(self.data.pin_memory(), self.where)


def worth_decoding_on_device(data: bytes, side: int, max_pixels: int = ReadPolicy.max_image_pixels) -> bool:
    """A JPEG (by its header) not so large that draft-mode decoding in a worker would be much cheaper."""
    return is_jpeg_at_most(data, DRAFT_ABOVE * side, max_pixels)


def decode_on_device(items: list[torch.Tensor | str | EncodedJpeg], side: int,
                     device: torch.device) -> list[torch.Tensor | str]:
    """Each item as a decoded uint8 [3, h, w] on `device` within `side`, or the one-line reason it failed.

    All JPEGs of the batch go to the decoder in one call; if that call fails, each is decoded alone so that only
    the broken ones are lost (named as the worker path names them).
    """
    jpegs = [index for index, item in enumerate(items) if isinstance(item, EncodedJpeg)]
    out: list[torch.Tensor | str] = [item.to(device, non_blocking=True) if isinstance(item, torch.Tensor) else item
                                     for item in items]  # type: ignore[misc]
    if not jpegs:
        return out
    encoded = [items[index].data for index in jpegs]  # type: ignore[union-attr]
    decoded = decode_jpegs(encoded, [items[index].where for index in jpegs], device)  # type: ignore[union-attr]
    for index, image in zip(jpegs, decoded):
        out[index] = image if isinstance(image, str) else fit_within(image, side)
    return out

