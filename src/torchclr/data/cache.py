"""Decode every image once into one uint8 tensor [N, 3, S, S], optionally kept in a memory-mapped cache file.

Decoding JPEGs every epoch is what starves most SimCLR ports; here an epoch only indexes a tensor. The
cache file is keyed by the source's fingerprint (names, sizes and CRCs or mtimes), so a changed source
is decoded again rather than read stale.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from torchclr.data.skips import BadFile
from torchclr.data.sources import ImageSet
from torchclr.errors import UserError


def stored_side(image_size: int) -> int:
    """Side at which images are held: the view size for small images, 1/0.875 of it for larger ones
    (room for the evaluation centre crop, as in ImageNet's resize-256/crop-224)."""
    return image_size if image_size <= 64 else round(image_size / 0.875)


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` and centre-crop a square: the one shape a tensor of images can hold."""
    if image.shape[-2:] == (size, size):
        return image
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def materialize(images: ImageSet, size: int | None = None, cache_dir: str | Path | None = None) -> ImageSet:
    """Return `images` held as one uint8 tensor of side `size` (default: the first image's side).

    Files that fail to decode are left out and recorded in `images.skipped` (with --strict the first stops
    the run). With `cache_dir`, the decoded tensor is stored there as a .npy file (the skipped files beside it,
    as JSON) and memory-mapped on later runs; an unreadable cache file is decoded again, never trusted.
    """
    if images.tensor is not None:
        if size is None or images.tensor.shape[-2:] == (size, size):
            return images
        return replace(images, tensor=torch.stack([square(img, size) for img in images.tensor]))
    if size is None:
        first = _first_decodable(images)
        size = first.shape[-1] if first.shape[-1] == first.shape[-2] else min(first.shape[-2:])
    cache_file = Path(cache_dir) / f"{images.fingerprint[:24]}-{size}px.npy" if cache_dir and images.fingerprint else None
    if cache_file is not None and cache_file.exists():
        cached = _load_cache(cache_file, images, size)
        if cached is not None:
            return cached
    tensor, bad = _decode_all(images, size)
    if cache_file is not None:
        _save_cache(cache_file, tensor.numpy(), bad)
    return _without(images, tensor, bad)


def _first_decodable(images: ImageSet) -> torch.Tensor:
    for index in range(len(images)):
        try:
            return images.image(index)
        except BadFile:
            continue
    raise UserError(f"data {images.origin}: none of its {len(images)} image files can be decoded")


def _without(images: ImageSet, tensor: torch.Tensor, bad: list[BadFile]) -> ImageSet:
    """The set minus the files in `bad` (recorded in its skip log); an all-bad set is an error."""
    for entry in bad:
        images.skipped.add(entry)
    if not bad:
        return replace(images, tensor=tensor)
    failed = {entry.where for entry in bad}
    keep = [i for i, name in enumerate(images.names) if f"{images.origin}/{name}" not in failed]
    if not keep:
        raise UserError(f"data {images.origin}: every image file is bad: {images.skipped.summary(len(images.skipped))}")
    return replace(images, tensor=tensor[keep] if len(keep) < len(tensor) else tensor,
                   labels=[images.labels[i] for i in keep], names=[images.names[i] for i in keep])


def _decode_all(images: ImageSet, size: int) -> tuple[torch.Tensor, list[BadFile]]:
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    bad: list[BadFile] = []

    def decode(index: int) -> None:
        try:
            out[index] = square(images.image(index), size)
        except BadFile as err:
            out[index] = 0
            if images.skipped.strict:
                images.skipped.add(err)  # raises, naming the file
            bad.append(err)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(len(images))))  # PIL releases the GIL while decoding
    return out, sorted(bad, key=lambda b: b.where)


def _load_cache(path: Path, images: ImageSet, size: int) -> ImageSet | None:
    """The cached set, or None (with a note) when the file is not a plain uint8 array of the right shape."""
    skipped_file = path.with_suffix(".skipped.json")
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
        bad = [BadFile(*entry) for entry in json.loads(skipped_file.read_text())] if skipped_file.exists() else []
    except (OSError, ValueError, TypeError) as err:
        print(f"torchclr: note: ignoring unreadable cache file {path} ({err}); decoding again", file=sys.stderr)
        return None
    if array.dtype != np.uint8 or array.shape != (len(images), 3, size, size):
        return None
    return _without(images, torch.from_numpy(array), bad)


def _save_cache(path: Path, array: np.ndarray, bad: list[BadFile]) -> None:
    """Best effort: a cache folder that is full or read-only costs speed on the next run, never this run."""
    try:  # the skip list first: a cache file never exists without the list of its rows to leave out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".skipped.json").write_text(json.dumps([[b.where, b.kind, b.detail] for b in bad]))
        _save_atomically(path, array)
    except OSError as err:
        print(f"torchclr: note: could not write the cache file {path} ({err.strerror or err}); "
              "the data stays in memory for this run", file=sys.stderr)


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
