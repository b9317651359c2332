"""Decode every image once into one uint8 tensor, optionally kept in a memory-mapped cache file.

Decoding JPEGs every epoch is what starves most SimCLR ports; here an epoch only indexes a tensor. Training holds
each image whole, resized so that its longer side fits the stored side, top-left in a zero-padded square beside
its valid (height, width): the random resized crop is then drawn over the whole image at its own aspect ratio, as
in the paper. Evaluation holds square centre views (`materialize`). A cache file is keyed by the source's
fingerprint (names, sizes and CRCs or mtimes) and the stored side, so a changed source is decoded again rather
than read stale.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset
from torchclr.data.reader import header_size, load_array
from torchclr.data.skips import BadFile
from torchclr.data.sources import ImageSet
from torchclr.errors import UserError
from torchclr.runtime import default_workers
from torchclr.transforms.centre import square
from torchclr.writer import bytes_writer, npy_writer, replace_file

STORED_SIZE_MULTIPLE = 8  # stored sides are rounded up to this
STORED_SIZE_MAX_FACTOR = 4  # and never exceed this many view sides, whatever the smallest crop scale
PARALLEL_FROM = 2_000  # images: below this, starting worker processes costs more than it saves


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
    tensor of equal-sized images, is only shrunk where larger than `side`. Files that fail to decode are left out
    and recorded in `images.skipped` (with --strict the first stops the run). With `cache_dir`, the tensor, the
    sizes and the skipped files are written there and memory-mapped by later runs (and by the other processes of
    this one); an unreadable cache file is decoded again, never trusted.
    """
    if images.tensor is not None:
        tensor = images.tensor
        if max(tensor.shape[-2:]) > side:
            tensor = torch.stack([fit_within(image, side) for image in tensor])
        return replace(images, tensor=tensor, sizes=None)
    cache_file = _cache_file(images, side, cache_dir)
    if cache_file is not None:
        held = _load_padded_cache(cache_file, len(images), images.policy.channels)
        if held is not None:
            tensor, sizes, bad = held
            return _without(images, tensor, bad, _sizes_or_none(sizes, tensor.shape[-1]))
    shapes = [(1, 1)] * len(images)
    bad: list[BadFile] = []
    for index, shape in each_image(images, _header_shape, range(len(images))):
        if isinstance(shape, BadFile):
            _record(images, bad, shape)
        else:
            shapes[index] = fitted_shape(*shape, side)
    sizes = torch.tensor(shapes, dtype=torch.int32)
    padded_side = int(sizes.max())
    skip = {entry.where for entry in bad}
    if cache_file is None:
        tensor = torch.zeros((len(images), images.policy.channels, padded_side, padded_side), dtype=torch.uint8)
        bad += _decode_all_padded(images, side, tensor, skip)
    else:
        tensor, more = _decode_into_cache(images, side, padded_side, sizes, cache_file, skip)
        bad += more
    if cache_file is not None:
        _write_skip_list(cache_file, bad)
    return _without(images, tensor, sorted(bad, key=lambda b: b.where), _sizes_or_none(sizes, padded_side))


def _header_shape(images: ImageSet, index: int) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels; a broken file raises BadFile."""
    assert images.read_bytes is not None
    name = images.names[index]
    return header_size(images.read_bytes(name), f"{images.origin}/{name}", images.policy.max_image_pixels,
                       channels=images.policy.channels)


def _record(images: ImageSet, bad: list[BadFile], err: BadFile) -> None:
    """Note a bad file; under --strict the skip log raises instead, naming it."""
    if images.skipped.strict:
        images.skipped.add(err)
    bad.append(err)


def _sizes_or_none(sizes: torch.Tensor, side: int) -> torch.Tensor | None:
    return None if bool((sizes == side).all()) else sizes


def _decode_all_padded(images: ImageSet, side: int, out: torch.Tensor, skip: set[str]) -> list[BadFile]:
    """Decode image i, fit it within `side` and write it top-left into out[i] (whose padding must be zero);
    returns the files that failed (their rows stay zero). Files in `skip` are already known to be bad."""
    bad: list[BadFile] = []
    wanted = [i for i in range(len(images)) if f"{images.origin}/{images.names[i]}" not in skip]
    for index, image in each_image(images, _FittedImage(side), wanted):
        if isinstance(image, BadFile):
            _record(images, bad, image)
        else:
            out[index, :, : image.shape[-2], : image.shape[-1]] = torch.from_numpy(image)
    return bad


class _FittedImage:
    """Image i fitted within `side`, as a numpy array (pickled back from a worker by value, not one shared-memory
    file per image)."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, images: ImageSet, index: int) -> np.ndarray:
        return fit_within(images.image(index), self.side).numpy()


class _SquareImage(_FittedImage):
    """Image i as a square centre view of side `side` (see `transforms.centre.square`)."""

    def __call__(self, images: ImageSet, index: int) -> np.ndarray:
        return square(images.image(index), self.side).numpy()


class _PerImage(Dataset):
    """`work(images, i)` for image i, in a DataLoader worker; a bad file comes back as its (where, kind, detail)."""

    def __init__(self, images: ImageSet, work: Callable[[ImageSet, int], Any]) -> None:
        self.images, self.work = images, work

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, Any, tuple[str, str, str] | None]:
        try:
            return index, self.work(self.images, index), None
        except BadFile as err:  # rebuilt by the caller: an exception pickles with its message alone
            return index, None, (err.where, err.kind, err.detail)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def each_image(images: ImageSet, work: Callable[[ImageSet, int], Any],
               indices: range | list[int]) -> Iterator[tuple[int, Any]]:
    """(i, work(images, i)) for every i of `indices`, or (i, BadFile) where image i is broken.

    A large set is worked on by processes (DataLoader workers; the zip and shard readers reopen their files in
    each): PIL decodes a small JPEG in a fraction of a millisecond, so threads spend their time on the GIL.
    """
    if len(indices) < PARALLEL_FROM:
        for index in indices:
            try:
                yield index, work(images, index)
            except BadFile as err:
                yield index, err
        return
    loader = DataLoader(_PerImage(images, work), batch_size=256, sampler=list(indices), collate_fn=_as_list,
                        num_workers=default_workers())
    for batch in loader:
        for index, result, error in batch:
            yield index, result if error is None else BadFile(*error)


def _cache_file(images: ImageSet, side: int, cache_dir: str | Path | None) -> Path | None:
    if not cache_dir or not images.fingerprint:
        return None
    return Path(cache_dir) / f"{images.fingerprint[:24]}-fit{side}px.npy"


def _sizes_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".sizes.npy")


def _load_padded_cache(cache_file: Path, count: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[BadFile]] | None:
    """The memory-mapped tensor, its sizes and skipped files, if all are there, readable and fit `count` images."""
    sizes_file = _sizes_file(cache_file)
    if not (cache_file.exists() and sizes_file.exists()):
        return None
    try:
        array = load_array(cache_file, mmap_mode="c")
        sizes = load_array(sizes_file)
        bad = _read_skip_list(cache_file)
    except (OSError, ValueError, TypeError) as err:
        print(f"torchclr: note: ignoring unreadable cache file {cache_file} ({err}); decoding again", file=sys.stderr)
        return None
    if (array.dtype != np.uint8 or array.ndim != 4 or array.shape[:2] != (count, channels) or array.shape[2] != array.shape[3]
            or sizes.shape != (count, 2)):
        return None
    return torch.from_numpy(array), torch.from_numpy(sizes), bad


def _decode_into_cache(images: ImageSet, side: int, padded_side: int, sizes: torch.Tensor, cache_file: Path,
                       skip: set[str]) -> tuple[torch.Tensor, list[BadFile]]:
    """Decode straight into a memory-mapped temporary file that the writer renames: no second copy in RAM, no half file.

    Best effort: a cache folder that is full or read-only costs speed on the next run, never this run."""
    shape = (len(images), images.policy.channels, padded_side, padded_side)

    def decode_into(tmp: Path) -> list[BadFile]:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        bad = _decode_all_padded(images, side, torch.from_numpy(array), skip)
        array.flush()
        return bad

    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        replace_file(_sizes_file(cache_file), npy_writer(sizes.numpy()))
        bad = replace_file(cache_file, decode_into)
    except OSError as err:
        _note_unwritable(cache_file, err)
        tensor = torch.zeros(shape, dtype=torch.uint8)
        return tensor, _decode_all_padded(images, side, tensor, skip)
    return torch.from_numpy(load_array(cache_file, mmap_mode="c")), bad


def _note_unwritable(cache_file: Path, err: OSError) -> None:
    print(f"torchclr: note: could not write the cache file {cache_file} ({err.strerror or err}); "
          "the data stays in memory for this run", file=sys.stderr)


def _skip_list_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".skipped.json")


def _write_skip_list(cache_file: Path, bad: list[BadFile]) -> None:
    try:
        replace_file(_skip_list_file(cache_file), bytes_writer(json.dumps([[b.where, b.kind, b.detail] for b in bad]).encode()))
    except OSError:  # without the list the cache is not trusted next time (see _read_skip_list): decoded again
        _sizes_file(cache_file).unlink(missing_ok=True)


def _read_skip_list(cache_file: Path) -> list[BadFile]:
    """The skipped files recorded beside a cache file; a cache without its list is not trusted (OSError)."""
    return [BadFile(*entry) for entry in json.loads(_skip_list_file(cache_file).read_text())]


def _without(images: ImageSet, tensor: torch.Tensor, bad: list[BadFile], sizes: torch.Tensor | None = None) -> ImageSet:
    """The set minus the files in `bad` (recorded in its skip log); an all-bad set is an error."""
    for entry in bad:
        images.skipped.add(entry)
    if not bad:
        return replace(images, tensor=tensor, sizes=sizes)
    failed = {entry.where for entry in bad}
    keep = [i for i, name in enumerate(images.names) if f"{images.origin}/{name}" not in failed]
    if not keep:
        raise UserError(f"data {images.origin}: every image file is bad: {images.skipped.summary(len(images.skipped))}")
    rows = torch.tensor(keep)
    return replace(images, tensor=tensor[rows] if len(keep) < len(tensor) else tensor,
                   sizes=None if sizes is None else sizes[rows],
                   labels=[images.labels[i] for i in keep], names=[images.names[i] for i in keep])


def materialize(images: ImageSet, size: int | None = None, cache_dir: str | Path | None = None) -> ImageSet:
    """Return `images` held as one uint8 tensor of square centre views of side `size` (default: the first image's side).

    Files that fail to decode are left out and recorded in `images.skipped`. With `cache_dir`, the decoded tensor
    is stored there as a .npy file (the skipped files beside it, as JSON) and memory-mapped on later runs.
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
        cached = _load_square_cache(cache_file, (len(images), images.policy.channels, size, size))
        if cached is not None:
            return _without(images, *cached)
    tensor, bad = _decode_all(images, size)
    if cache_file is not None:
        try:  # the skip list first: a cache file never exists without the list of its rows to leave out
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            _write_skip_list(cache_file, bad)
            replace_file(cache_file, npy_writer(tensor.numpy()))
        except OSError as err:
            _note_unwritable(cache_file, err)
    return _without(images, tensor, bad)


def _first_decodable(images: ImageSet) -> torch.Tensor:
    for index in range(len(images)):
        try:
            return images.image(index)
        except BadFile:
            continue
    raise UserError(f"data {images.origin}: none of its {len(images)} image files can be decoded")


def _load_square_cache(path: Path, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, list[BadFile]] | None:
    """The cached views and skipped files, or None (with a note) when the file is not a plain uint8 array of the right shape."""
    try:
        array = load_array(path, mmap_mode="c")
        bad = _read_skip_list(path)
    except (OSError, ValueError, TypeError) as err:
        print(f"torchclr: note: ignoring unreadable cache file {path} ({err}); decoding again", file=sys.stderr)
        return None
    if array.dtype != np.uint8 or array.shape != shape:
        return None
    return torch.from_numpy(array), bad


def _decode_all(images: ImageSet, size: int) -> tuple[torch.Tensor, list[BadFile]]:
    out = torch.zeros((len(images), images.policy.channels, size, size), dtype=torch.uint8)
    bad: list[BadFile] = []
    for index, image in each_image(images, _SquareImage(size), range(len(images))):
        if isinstance(image, BadFile):
            _record(images, bad, image)
        else:
            out[index] = torch.from_numpy(image)
    return out, sorted(bad, key=lambda b: b.where)
