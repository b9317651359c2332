"""Decode every image once into one uint8 tensor, optionally kept in a memory-mapped cache file.

Decoding JPEGs every epoch is what starves most SimCLR ports; here an epoch only indexes a tensor. Training holds
each image whole, resized so that its longer side fits the stored side, top-left in a zero-padded square beside
its valid (height, width): the random resized crop is then drawn over the whole image at its own aspect ratio, as
in the paper. Evaluation holds square centre views (`materialize`). A cache file is keyed by the source's
fingerprint (names, sizes and CRCs or mtimes) and the stored side, so a changed source is decoded again rather
than read stale.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from torchclr.data.sources import ImageSet, decode_image

STORED_SIZE_MULTIPLE = 8  # stored sides are rounded up to this
STORED_SIZE_MAX_FACTOR = 4  # and never exceed this many view sides, whatever the smallest crop scale


def default_stored_size(image_size: int, crop_scale: tuple[float, float]) -> int:
    """The side at which images are stored so that a crop of the smallest scale still has the view's resolution.

    A crop of area scale·S² has a side of about S·sqrt(scale), so S = image_size / sqrt(min scale), rounded up to
    a multiple of 8 and capped at 4 view sides (0.08, the paper's smallest scale, gives 3.54 view sides).
    """
    wanted = image_size / math.sqrt(crop_scale[0])
    capped = min(wanted, STORED_SIZE_MAX_FACTOR * image_size)
    return max(image_size, math.ceil(capped / STORED_SIZE_MULTIPLE - 1e-9) * STORED_SIZE_MULTIPLE)


def fitted_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) of an image of `height`×`width` once its longer side fits `side` (never enlarged)."""
    longer = max(height, width)
    if longer <= side:
        return height, width
    return max(1, round(height * side / longer)), max(1, round(width * side / longer))


def fit_within(image: torch.Tensor, side: int) -> torch.Tensor:
    """Resize (antialiased) so that the longer side is at most `side`, keeping the aspect ratio; never upscale."""
    shape = fitted_shape(*image.shape[-2:], side)
    if shape == tuple(image.shape[-2:]):
        return image
    return TF.resize(image, list(shape), antialias=True)


def pad_to(image: torch.Tensor, side: int) -> torch.Tensor:
    """Zero-pad at the bottom and right to side×side: the image stays top-left, where its valid size says."""
    height, width = image.shape[-2:]
    if (height, width) == (side, side):
        return image
    out = image.new_zeros(image.shape[0], side, side)
    out[:, :height, :width] = image
    return out


def materialize_padded(images: ImageSet, side: int, cache_dir: str | Path | None = None) -> ImageSet:
    """`images` held as a padded uint8 tensor [N, 3, S, S] (S <= side, the largest stored side) with `sizes`.

    `sizes` [N, 2] holds each image's valid (height, width); it is None when every image fills the tensor (e.g.
    CIFAR's 32×32 images), which the augmentation then treats as a plain batch. A torchvision set, held as one
    tensor of equal-sized images, is only shrunk where larger than `side`. With `cache_dir`, the tensor and the
    sizes are written there and memory-mapped by later runs (and by the other processes of this one).
    """
    if images.tensor is not None:
        tensor = images.tensor
        if max(tensor.shape[-2:]) > side:
            tensor = torch.stack([fit_within(image, side) for image in tensor])
        return replace(images, tensor=tensor, sizes=None)
    cache_file = _cache_file(images, side, cache_dir)
    if cache_file is not None:
        held = _load_cache(cache_file, len(images))
        if held is not None:
            return replace(images, tensor=held[0], sizes=_sizes_or_none(held[1], held[0].shape[-1]))
    sizes = torch.tensor([fitted_shape(*_header_shape(images, i), side) for i in range(len(images))], dtype=torch.int32)
    padded_side = int(sizes.max())
    if cache_file is None:
        tensor = torch.zeros((len(images), 3, padded_side, padded_side), dtype=torch.uint8)
        _decode_all_padded(images, side, tensor)
    else:
        tensor = _decode_into_cache(images, side, padded_side, sizes, cache_file)
    return replace(images, tensor=tensor, sizes=_sizes_or_none(sizes, padded_side))


def _header_shape(images: ImageSet, index: int) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels; a broken file names itself."""
    assert images.read_bytes is not None
    name = images.names[index]
    data = images.read_bytes(name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # PIL's many header errors: let the decoder raise its one-line UserError
        image = decode_image(data, f"{images.origin}/{name}")
        height, width = image.shape[-2:]
    return height, width


def _sizes_or_none(sizes: torch.Tensor, side: int) -> torch.Tensor | None:
    return None if bool((sizes == side).all()) else sizes


def _decode_all_padded(images: ImageSet, side: int, out: torch.Tensor) -> None:
    """Decode image i, fit it within `side` and write it top-left into out[i] (whose padding must be zero)."""

    def decode(index: int) -> None:
        image = fit_within(images.image(index), side)
        out[index, :, : image.shape[-2], : image.shape[-1]] = image

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(len(images))))  # PIL releases the GIL while decoding


def _cache_file(images: ImageSet, side: int, cache_dir: str | Path | None) -> Path | None:
    if not cache_dir or not images.fingerprint:
        return None
    return Path(cache_dir) / f"{images.fingerprint[:24]}-fit{side}px.npy"


def _sizes_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".sizes.npy")


def _load_cache(cache_file: Path, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The memory-mapped tensor and its sizes, if both files are there and fit `count` images."""
    sizes_file = _sizes_file(cache_file)
    if not (cache_file.exists() and sizes_file.exists()):
        return None
    array, sizes = np.load(cache_file, mmap_mode="c"), np.load(sizes_file)
    if array.ndim != 4 or array.shape[:2] != (count, 3) or array.shape[2] != array.shape[3] or sizes.shape != (count, 2):
        return None
    return torch.from_numpy(array), torch.from_numpy(sizes)


def _decode_into_cache(images: ImageSet, side: int, padded_side: int, sizes: torch.Tensor, cache_file: Path) -> torch.Tensor:
    """Decode straight into a memory-mapped temporary file, then rename it: no second copy in RAM, no half file."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(_sizes_file(cache_file), lambda handle: np.save(handle, sizes.numpy()))
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
    os.close(fd)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), 3, padded_side, padded_side))
        _decode_all_padded(images, side, torch.from_numpy(array))
        array.flush()
        del array
        os.replace(tmp, cache_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return torch.from_numpy(np.load(cache_file, mmap_mode="c"))


def stored_side(image_size: int) -> int:
    """Side of the square evaluation views' store: the view size for small images, 1/0.875 of it for larger ones
    (room for the centre crop, as in ImageNet's resize-256/crop-224)."""
    return image_size if image_size <= 64 else round(image_size / 0.875)


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` and centre-crop a square: the evaluation view's shape."""
    if image.shape[-2:] == (size, size):
        return image
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def materialize(images: ImageSet, size: int | None = None, cache_dir: str | Path | None = None) -> ImageSet:
    """Return `images` held as one uint8 tensor of square centre views of side `size` (default: the first image's side).

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
        _save_atomically(cache_file, lambda handle: np.save(handle, tensor.numpy()))
    return replace(images, tensor=tensor)


def _decode_all(images: ImageSet, size: int) -> torch.Tensor:
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)

    def decode(index: int) -> None:
        out[index] = square(images.image(index), size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(len(images))))  # PIL releases the GIL while decoding
    return out


def _save_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
