"""Tar shards in the webdataset layout, read in place: members `key.jpg` / `key.png` with an optional `key.cls`.

A million images as a million files strain file systems; as a few hundred uncompressed tar shards they do not.
Each shard is indexed once from its headers (name, data offset and size of every member), so reading an image
is one seek and one read of the shard, in any order. A `key.cls` member holds the image's class index as text.
A shard cut short keeps its complete images and says how many it has (a one-line warning), so a run can go on.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchclr.data.names import PackedNames
from torchclr.errors import UserError

LABEL_SUFFIX = ".cls"
MAX_CLASSES = 1_000_000  # class indices above this are not a labelling (the class list is built 0..max)


def shard_paths(path: Path) -> list[Path]:
    """The .tar shards that make up `path`: the file itself, or the .tar files directly in the folder."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file() and not p.name.startswith("."))


def is_tar_shard(path: Path) -> bool:
    return path.is_file() and path.suffix == ".tar"


class ShardReader:
    """Reads one image's bytes from its shard by the offsets of the index.

    Positioned reads (os.pread) share one descriptor per shard between threads (the in-memory path decodes with
    a thread pool); each worker process opens its own.
    """

    def __init__(self, names: PackedNames, shards: list[Path], shard_of: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.names, self.shards = names, shards
        self.shard_of, self.offsets, self.sizes = shard_of, offsets, sizes
        self._descriptors: dict[int, int] = {}
        self._pid = -1

    def __call__(self, name: str) -> bytes:
        position = self.names.sorted_position(name)  # names are sorted: no second table of a million keys
        if position < 0:
            raise KeyError(f"{name} is not in the shards' index")
        if self._pid != os.getpid():
            self._descriptors, self._pid = {}, os.getpid()
        shard = int(self.shard_of[position])
        descriptor = self._descriptors.get(shard)
        if descriptor is None:  # a race here opens a spare descriptor, harmless
            descriptor = self._descriptors[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return os.pread(descriptor, int(self.sizes[position]), int(self.offsets[position]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptors": {}, "_pid": -1}


def _index_shard(path: Path, extensions: tuple[str, ...]) -> list[tuple[str, int, int, int | None]]:
    """(member name, data offset, size, class index or None) of each image in one shard, in the shard's order.

    Labels are matched within the shard, so no table of every key in the data set is ever built.
    """
    images: list[tuple[str, int, int]] = []
    labels: dict[str, int] = {}
    file_size = path.stat().st_size
    cut = False
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_size:
                    cut = True
                    break
                lower = member.name.lower()
                if lower.endswith(extensions):
                    images.append((member.name, member.offset_data, member.size))
                elif lower.endswith(LABEL_SUFFIX):
                    key = member.name[: -len(LABEL_SUFFIX)]
                    labels[key] = _class_index(archive.extractfile(member).read(65), f"{path}/{member.name}")  # type: ignore[union-attr]
            end = archive.offset
    except tarfile.ReadError as err:
        if not images:
            raise UserError(f"data shard {path} is not a readable tar file: {err}") from None
        cut = True
    else:
        cut = cut or _garbage_after(path, end)
    if cut:
        if labels:  # the cut may fall between an image and its label: keep only complete pairs
            images = [image for image in images if image[0].rsplit(".", 1)[0] in labels]
        print(f"torchclr: warning: data shard {path} is cut short; using its first {len(images)} complete images",
              file=sys.stderr, flush=True)
    return [(name, offset, size, labels.get(name.rsplit(".", 1)[0])) for name, offset, size in images]


def _class_index(raw: bytes, where: str) -> int:
    """The member's class index; text that is not one, or an index past MAX_CLASSES, is one line naming it."""
    text = raw[:64].decode(errors="replace").strip()
    if not (text.isascii() and text.isdigit()) or len(raw) > 64:
        raise UserError(f"data shard member {where} must hold a class index, got {text[:40]!r}")
    if int(text) >= MAX_CLASSES:
        raise UserError(f"data shard member {where} holds class index {text[:40]}, over the {MAX_CLASSES:,} classes torchclr accepts")
    return int(text)


def _garbage_after(path: Path, end: int) -> bool:
    """Whether non-zero bytes follow the last header tarfile could read: a header cut in the middle."""
    with open(path, "rb") as handle:
        handle.seek(end)
        return any(handle.read(1 << 16))


@dataclass
class ShardIndex:
    """Every image of a set of shards, sorted by name: what an ImageSet needs to read them."""

    names: PackedNames
    labels: list[int] | None  # None unless every image has a .cls member
    reader: ShardReader
    fingerprint: str


def index_shards(path: Path, extensions: tuple[str, ...]) -> ShardIndex | None:
    """The images in the tar shards at `path` (a .tar file or a folder of them); None when it holds no image.

    Kept as columns (packed names, numpy arrays of numbers) so that a million images index in ~60 MB.
    """
    shards = shard_paths(path)
    shard_of, offsets, sizes, labels = array("q"), array("q"), array("q"), array("q")
    digest = hashlib.sha256()

    def members():
        for number, shard in enumerate(shards):
            stat = shard.stat()
            digest.update(f"{shard.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            for name, offset, size, label in _index_shard(shard, extensions):
                shard_of.append(number)
                offsets.append(offset)
                sizes.append(size)
                labels.append(-1 if label is None else label)
                yield f"{shard.stem}/{name}"

    names = PackedNames.build(members())
    if not names:
        return None
    columns = [np.frombuffer(column, dtype=np.int64) for column in (shard_of, offsets, sizes, labels)]
    if not names.is_sorted():  # shards written out of order: sort once (names and columns together)
        order = np.array(sorted(range(len(names)), key=names.__getitem__))
        names = PackedNames.build(names[i] for i in order)
        columns = [column[order] for column in columns]
    label_column = columns[3]
    found = None if (label_column < 0).any() else label_column.tolist()
    return ShardIndex(names, found, ShardReader(names, shards, *columns[:3]), digest.hexdigest())
