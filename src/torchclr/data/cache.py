"""Decode every image once into one uint8 tensor [N, 3, S, S], optionally kept in a memory-mapped cache file.

Decoding JPEGs every epoch is what starves most SimCLR ports; here an epoch only indexes a tensor. The
cache file is keyed by the source's fingerprint (names, sizes and CRCs or mtimes), so a changed source
is decoded again rather than read stale.
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from torchclr.data.sources import ImageSet


def stored_side(image_size: int) -> int:
    """Side at which images are held: the view size for small images, 1/0.875 of it for larger ones
    (room for the evaluation centre crop, as in ImageNet's resize-256/crop-224)."""
    return image_size if image_size <= 64 else round(image_size / 0.875)


def default_stored_size(image_size: int, crop_scale: tuple[float, float]) -> int:
    """Longest side at which images are held: a crop of the smallest scale still has the view's resolution."""
    return math.ceil(image_size / math.sqrt(crop_scale[0]))


def fit_within(image: torch.Tensor, side: int) -> torch.Tensor:
    """Resize uint8 [3, H, W] so that max(h, w) <= side, keeping the aspect ratio; never upscales."""
    height, width = image.shape[-2:]
    longest = max(height, width)
    if longest <= side:
        return image
    size = [max(1, round(height * side / longest)), max(1, round(width * side / longest))]
    return TF.resize(image, size, antialias=True)


def pad_to(image: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 [3, side, side] holding `image` at the top left: one shape for images of any aspect.

    The padding repeats the last row and column rather than holding zeros: roi_align's bilinear samples reach up
    to half a pixel past a crop box, and at the valid region's edge they must read what they read at a real
    image border (the edge pixel), not blend in black.
    """
    rows = torch.arange(side).clamp_(max=image.shape[-2] - 1)
    columns = torch.arange(side).clamp_(max=image.shape[-1] - 1)
    return image.index_select(-2, rows).index_select(-1, columns)


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` and centre-crop a square: the one shape a tensor of images can hold."""
    if image.shape[-2:] == (size, size):
        return image
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def materialize(images: ImageSet, size: int | None = None, cache_dir: str | Path | None = None) -> ImageSet:
    """Return `images` held as one uint8 tensor of side `size` (default: the first image's side).

    With `cache_dir`, the decoded tensor is stored there as a .npy file and memory-mapped on later runs.
    """
    if images.tensor is not None:
        if size is None or images.tensor.shape[-2:] == (size, size):
            return images
        return replace(images, tensor=torch.stack([square(img, size) for img in images.tensor]))
    if size is None:
        first = images.image(0)
        size = first.shape[-1] if first.shape[-1] == first.shape[-2] else min(first.shape[-2:])
    cache_file = Path(cache_dir) / f"{images.fingerprint[:24]}-{size}px.npy" if cache_dir and images.fingerprint else None
    if cache_file is not None and cache_file.exists():
        array = np.load(cache_file, mmap_mode="c")
        if array.shape == (len(images), 3, size, size):
            return replace(images, tensor=torch.from_numpy(array))
    tensor = _decode_all(images, size)
    if cache_file is not None:
        _save_atomically(cache_file, tensor.numpy())
    return replace(images, tensor=tensor)


def _decode_all(images: ImageSet, size: int) -> torch.Tensor:
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)

    def decode(index: int) -> None:
        out[index] = square(images.image(index), size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(len(images))))  # PIL releases the GIL while decoding
    return out


def _save_atomically(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
