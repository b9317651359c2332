"""Where images come from: a folder, a zip archive read in place, torchvision's CIFAR/STL-10, or the shipped sample.

Every source becomes an `ImageSet`: images addressed by index as uint8 tensors [3, H, W], with labels
(-1 when unlabelled) and class names. File-backed sets decode lazily; `data.cache` turns them into one
in-memory uint8 tensor so that no JPEG is decoded twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from torchclr.data.names import PackedNames
from torchclr.data.shards import index_shards, is_tar_shard, shard_paths
from torchclr.data.skips import BadFile, ReadPolicy, SkipLog
from torchclr.errors import UserError

# torchclr checks every image against its own --max-image-pixels before decoding it, so PIL's warning is redundant.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

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
    names: Sequence[str] = field(default_factory=list)
    read_bytes: Callable[[str], bytes] | None = None
    fingerprint: str = ""
    sizes: torch.Tensor | None = None
    policy: ReadPolicy = field(default_factory=ReadPolicy)
    skipped: SkipLog = field(default_factory=SkipLog)

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
        return decode_image(self.read_bytes(name), f"{self.origin}/{name}", self.policy.max_image_pixels, draft_side)


def decode_image(data: bytes, where: str, max_pixels: int = ReadPolicy.max_image_pixels,
                 draft_side: int | None = None) -> torch.Tensor:
    """Decode any PIL-readable image to RGB uint8 [3, H, W]; a broken file raises `BadFile` naming itself.

    The pixel count is read from the header and checked before anything is decoded (decompression bombs). With
    `draft_side`, a JPEG whose longer side exceeds it is decoded by PIL's draft mode at the largest DCT reduction
    (1/2, 1/4 or 1/8) that keeps the longer side at least `draft_side`: a fraction of the work.
    """
    if not data:
        raise BadFile(where, "zero-byte", "the file is empty")
    try:
        Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise BadFile(where, "too many pixels", f"{img.width}x{img.height} pixels is over --max-image-pixels {max_pixels}")
            width, height = img.size
            longest = max(width, height)
            if draft_side is not None and img.format == "JPEG" and longest > draft_side:
                img.draft("RGB", (-(-width * draft_side // longest), -(-height * draft_side // longest)))
            rgb = to_rgb8(img)
    except UnidentifiedImageError:
        raise BadFile(where, "not an image", "not an image format PIL can read") from None
    except Image.DecompressionBombError:  # PIL's own check, at twice the limit, fires while opening
        raise BadFile(where, "too many pixels", f"the header declares over twice --max-image-pixels {max_pixels}") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError) as err:
        raise BadFile(where, "truncated or corrupt", f"{type(err).__name__}: {err}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def to_rgb8(img: Image.Image) -> np.ndarray:
    """RGB uint8 [H, W, 3]; 16-bit, 32-bit and float images are scaled to 8 bits (PIL's convert clips them).

    Integer images map their type's full range onto 0..255 (16-bit: v * 255 / 65535); float images are taken as
    0..1 when they lie in it, otherwise their own min..max is stretched onto 0..255; NaN counts as 0.
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return np.array(img.convert("RGB"))
    values = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (0.0, 1.0) if values.size and values.min() >= 0 and values.max() <= 1 else (values.min(), values.max())
    else:  # "I" is how PIL opens some 16-bit files too: 16 bits unless a value says otherwise
        values = values.astype(np.float64)
        low, high = (0.0, 65535.0) if values.min() >= 0 and values.max() <= 65535 else (values.min(), values.max())
    scaled = np.round((values - low) * (255.0 / max(high - low, 1e-12)))
    gray = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def open_images(spec: str, split: str, download: bool = False, policy: ReadPolicy | None = None) -> ImageSet:
    """Open `spec` (a folder, a .zip, `cifar10:DIR`, `cifar100:DIR`, `stl10:DIR` or `sample`) at `split`.

    For folders and zips the split is a sub-folder (`train`, `test`, ...) when one exists; a folder
    without split sub-folders is itself the training split. Files that break `policy` are skipped and
    recorded in the set's `skipped` log (special files are never opened, large files never read).
    """
    policy = policy or ReadPolicy()
    kind, _, root = spec.partition(":")
    if spec == SAMPLE:
        sample = resources.files("torchclr.data") / "sample" / "cifar10-sample.zip"
        with resources.as_file(sample) as path:
            return _open_zip(Path(path), split, spec, policy)
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
        return _open_zip(path, split, spec, policy)
    if not path.is_dir():
        raise UserError(f"data path {spec} is neither a folder nor a zip archive (a FIFO or a device?)")
    base = path / split if (path / split).is_dir() else path
    if shard_paths(base):
        return _open_shards(base, str(base))
    return _open_folder(path, split, policy)


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


def _finish(origin: str, names: list[str], read: Callable[[str], bytes], digest: "hashlib._Hash",
            policy: ReadPolicy, skipped: SkipLog) -> ImageSet:
    if not names:
        found = f"; all {len(skipped)} image files were skipped: {skipped.summary(len(skipped))}" if skipped.entries else ""
        raise UserError(f"data path {origin} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}){found}")
    names.sort()
    labels, classes = _labels_from_layout(names)
    digest.update(f"limits {policy.max_image_pixels} {policy.max_file_bytes}".encode())  # they decide what is skipped
    return ImageSet(origin=origin, labels=labels, classes=classes, names=PackedNames.build(names), read_bytes=read,
                    fingerprint=digest.hexdigest(), policy=policy, skipped=skipped)


def _check_listed_file(full: Path, where: str, max_bytes: int) -> os.stat_result:
    """`os.stat` only (never open): special files, broken symlinks, empty and oversized files raise `BadFile`."""
    try:
        info = full.stat()
    except OSError as err:
        kind = "dangling or looping symlink" if full.is_symlink() else "unreadable"
        raise BadFile(where, kind, err.strerror or str(err)) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadFile(where, "not a regular file", "a FIFO, socket or device, which is never opened")
    if info.st_size == 0:
        raise BadFile(where, "zero-byte", "the file is empty")
    if info.st_size > max_bytes:
        raise BadFile(where, "too large", f"{info.st_size} bytes is over --max-file-mb {max_bytes >> 20}")
    return info


def _open_folder(root: Path, split: str, policy: ReadPolicy) -> ImageSet:
    base = root / split if (root / split).is_dir() else root
    names: list[str] = []
    digest = hashlib.sha256()
    skipped = SkipLog(policy.strict)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                full = Path(dirpath) / filename
                name = full.relative_to(base).as_posix()
                try:
                    info = _check_listed_file(full, f"{base}/{name}", policy.max_file_bytes)
                except BadFile as bad:
                    skipped.add(bad)
                    continue
                digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
                names.append(name)

    def read(name: str) -> bytes:
        where = f"{base}/{name}"
        try:
            with open(base / name, "rb") as handle:  # listed as a regular file; read no more than the limit
                data = handle.read(policy.max_file_bytes + 1)
        except OSError as err:
            raise BadFile(where, "unreadable", err.strerror or str(err)) from None
        if len(data) > policy.max_file_bytes:
            raise BadFile(where, "too large", f"grew over --max-file-mb {policy.max_file_bytes >> 20} since it was listed")
        return data

    return _finish(str(base), names, read, digest, policy, skipped)


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

    def __init__(self, path: Path, prefix: str, label: str, max_bytes: int) -> None:
        self.path, self.prefix, self.label, self.max_bytes = path, prefix, label, max_bytes
        self._archive: zipfile.ZipFile | None = None
        self._pid = -1

    def __call__(self, name: str) -> bytes:
        if self._archive is None or self._pid != os.getpid():
            self._archive, self._pid = zipfile.ZipFile(self.path), os.getpid()
        where = f"{self.label}/{self.prefix}{name}"
        try:
            with self._archive.open(self.prefix + name) as member:  # sizes were checked when listed; read no more
                data = member.read(self.max_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
            kind = "bad CRC" if "CRC" in str(err) else "corrupt zip member"
            raise BadFile(where, kind, str(err)) from None
        if len(data) > self.max_bytes:
            raise BadFile(where, "too large", f"inflates to over --max-file-mb {self.max_bytes >> 20}")
        return data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archive": None, "_pid": -1}


def _open_zip(path: Path, split: str, label: str, policy: ReadPolicy) -> ImageSet:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"data archive {label} is not a readable zip: {err}") from None
    prefix = f"{split}/" if any(info.filename.startswith(f"{split}/") for info in infos) else ""
    digest = hashlib.sha256()
    names: list[str] = []
    skipped = SkipLog(policy.strict)
    for info in infos:
        if info.filename.startswith(prefix) and info.filename.lower().endswith(IMAGE_EXTENSIONS):
            name = info.filename[len(prefix):]
            if any(part.startswith(("__MACOSX", ".")) for part in name.split("/")):
                continue
            if info.file_size == 0 or info.file_size > policy.max_file_bytes:
                kind = "zero-byte" if info.file_size == 0 else "too large"
                skipped.add(BadFile(f"{label}/{info.filename}", kind, f"the member holds {info.file_size} bytes "
                                    f"(limit: --max-file-mb {policy.max_file_bytes >> 20})"))
                continue
            names.append(name)
            digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    reader = _ZipReader(path, prefix, label, policy.max_file_bytes)
    return _finish(f"{label}:{split}" if prefix else label, names, reader, digest, policy, skipped)


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
