"""Where images come from: a folder, a zip archive read in place, torchvision's CIFAR/STL-10, or the shipped sample.

Every source becomes an `ImageSet`: images addressed by index as uint8 tensors [3, H, W], with labels
(-1 when unlabelled) and class names. File-backed sets decode lazily; `data.cache` turns them into one
in-memory uint8 tensor so that no JPEG is decoded twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from torchclr.data.shards import index_shards, is_tar_shard, shard_paths
from torchclr.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
SAMPLE = "sample"
UNLABELLED = -1


@dataclass
class ImageSet:
    """Images by index as uint8 [3, H, W]; either held in `tensor` or decoded from files by `read_bytes`.

    A held `tensor` of images of different shapes is padded (top-left aligned); `sizes` [N, 2] then gives each
    image's valid (height, width). None means every image fills the tensor.
    """

    origin: str
    labels: list[int]
    classes: list[str]
    tensor: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)
    read_bytes: Callable[[str], bytes] | None = None
    fingerprint: str = ""
    sizes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0

    def image(self, index: int, draft_side: int | None = None) -> torch.Tensor:
        """Image `index` as uint8 [3, H, W]; with `draft_side`, a large JPEG may come at 1/2-1/8 scale (see decode_image)."""
        if self.tensor is not None:
            if self.sizes is not None:
                height, width = self.sizes[index].tolist()
                return self.tensor[index, :, :height, :width]
            return self.tensor[index]
        assert self.read_bytes is not None
        name = self.names[index]
        return decode_image(self.read_bytes(name), f"{self.origin}/{name}", draft_side)


def decode_image(data: bytes, where: str, draft_side: int | None = None) -> torch.Tensor:
    """Decode any PIL-readable image to RGB uint8 [3, H, W]; a broken file names itself in the error.

    With `draft_side`, a JPEG whose longer side exceeds it is decoded by PIL's draft mode at the largest DCT
    reduction (1/2, 1/4 or 1/8) that keeps the longer side at least `draft_side`: a fraction of the work.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            longest = max(width, height)
            if draft_side is not None and img.format == "JPEG" and longest > draft_side:
                img.draft("RGB", (-(-width * draft_side // longest), -(-height * draft_side // longest)))
            rgb = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise UserError(f"cannot decode image {where}: not an image format PIL can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot decode image {where}: {err}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def open_images(spec: str, split: str, download: bool = False) -> ImageSet:
    """Open `spec` (a folder, a .zip, `cifar10:DIR`, `cifar100:DIR`, `stl10:DIR` or `sample`) at `split`.

    For folders and zips the split is a sub-folder (`train`, `test`, ...) when one exists; a folder
    without split sub-folders is itself the training split.
    """
    kind, _, root = spec.partition(":")
    if spec == SAMPLE:
        sample = resources.files("torchclr.data") / "sample" / "cifar10-sample.zip"
        with resources.as_file(sample) as path:
            return _open_zip(Path(path), split, label=spec)
    if kind in TORCHVISION_SETS and root:
        return _open_torchvision(kind, root, split, download)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data path {spec} does not exist")
    if is_tar_shard(path):
        return _open_shards(path, spec)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise UserError(f"data path {spec} is a file but not a zip archive of images (or a .tar shard)")
        return _open_zip(path, split, label=spec)
    base = path / split if (path / split).is_dir() else path
    if shard_paths(base):
        return _open_shards(base, str(base))
    return _open_folder(path, split)


def has_split(spec: str, split: str) -> bool:
    """Whether `spec` offers `split` as its own sub-folder (or is a torchvision set / the sample)."""
    kind, _, root = spec.partition(":")
    if spec == SAMPLE or (kind in TORCHVISION_SETS and root):
        return True
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / split).is_dir()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.startswith(f"{split}/") for name in archive.namelist())
    return False


def _labels_from_layout(names: list[str]) -> tuple[list[int], list[str]]:
    """Class sub-folders give labels; images not all inside a first-level sub-folder are unlabelled."""
    parents = [name.split("/")[0] if "/" in name else None for name in names]
    if any(parent is None for parent in parents):
        return [UNLABELLED] * len(names), []
    classes = sorted(set(parents))  # type: ignore[arg-type]
    index = {name: i for i, name in enumerate(classes)}
    return [index[parent] for parent in parents], classes  # type: ignore[index]


def _finish(origin: str, names: list[str], read: Callable[[str], bytes], fingerprint: str) -> ImageSet:
    if not names:
        raise UserError(f"data path {origin} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    names.sort()
    labels, classes = _labels_from_layout(names)
    return ImageSet(origin=origin, labels=labels, classes=classes, names=names, read_bytes=read, fingerprint=fingerprint)


def _open_folder(root: Path, split: str) -> ImageSet:
    base = root / split if (root / split).is_dir() else root
    names: list[str] = []
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                full = Path(dirpath) / filename
                name = full.relative_to(base).as_posix()
                stat = full.stat()
                digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                names.append(name)

    def read(name: str) -> bytes:
        return (base / name).read_bytes()

    return _finish(str(base), names, read, digest.hexdigest())


def _open_shards(path: Path, origin: str) -> ImageSet:
    """Tar shards in the webdataset layout (see `torchclr.data.shards`); classes are the .cls indices."""
    index = index_shards(path, IMAGE_EXTENSIONS)
    if index is None:
        raise UserError(f"data path {origin} holds no images in its .tar shards (looked for {', '.join(IMAGE_EXTENSIONS)})")
    labels = index.labels if index.labels is not None else [UNLABELLED] * len(index.names)
    classes = [str(c) for c in range(max(labels) + 1)] if index.labels is not None else []
    return ImageSet(origin=origin, labels=labels, classes=classes, names=index.names, read_bytes=index.reader,
                    fingerprint=index.fingerprint)


class _ZipReader:
    """Reads members of a zip in place; reopens the archive in each worker process (handles are not fork-safe)."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix = path, prefix
        self._archive: zipfile.ZipFile | None = None
        self._pid = -1

    def __call__(self, name: str) -> bytes:
        if self._archive is None or self._pid != os.getpid():
            self._archive, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._archive.read(self.prefix + name)

    def __getstate__(self) -> dict:
        return {"path": self.path, "prefix": self.prefix, "_archive": None, "_pid": -1}


def _open_zip(path: Path, split: str, label: str) -> ImageSet:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as err:
        raise UserError(f"data archive {label} is not a readable zip: {err}") from None
    prefix = f"{split}/" if any(info.filename.startswith(f"{split}/") for info in infos) else ""
    digest = hashlib.sha256()
    names: list[str] = []
    for info in infos:
        if info.filename.startswith(prefix) and info.filename.lower().endswith(IMAGE_EXTENSIONS):
            name = info.filename[len(prefix):]
            if not any(part.startswith(("__MACOSX", ".")) for part in name.split("/")):
                names.append(name)
                digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    return _finish(f"{label}:{split}" if prefix else label, names, _ZipReader(path, prefix), digest.hexdigest())


def _open_torchvision(kind: str, root: str, split: str, download: bool) -> ImageSet:
    """torchvision's loaders; `download=True` keeps their network path for users who have one."""
    import torchvision

    try:
        if kind == "stl10":
            stl_split = {"test": "test", "train": "train", "unlabeled": "unlabeled"}.get(split, split)
            dataset = torchvision.datasets.STL10(root, split=stl_split, download=download)
            images = torch.from_numpy(dataset.data)
            labels = [int(v) for v in dataset.labels]
        else:
            cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
            dataset = cls(root, train=(split == "train"), download=download)
            images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
            labels = [int(v) for v in dataset.targets]
    except RuntimeError as err:  # torchvision says "Dataset not found or corrupted" here
        raise UserError(f"data {kind}:{root} ({split}): {err} (pass --download to fetch it)") from None
    return ImageSet(origin=f"{kind}:{root}:{split}", labels=labels, classes=list(dataset.classes), tensor=images)
