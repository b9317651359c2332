"""Where images come from: a folder, a zip archive read in place, torchvision's CIFAR/STL-10, or the shipped sample.

Every source becomes an `ImageSet`: images addressed by index as uint8 tensors [C, H, W] (C: --in-channels), with labels
(-1 when unlabelled) and class names. File-backed sets decode lazily; `data.cache` turns them into one
in-memory uint8 tensor so that no JPEG is decoded twice.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from torchclr.data.names import PackedNames
from torchclr.data.reader import ZipMemberReader, check_listed_file, decode_image, is_zip, read_bytes, zip_members
from torchclr.data.shards import index_shards, is_tar_shard, shard_paths
from torchclr.data.skips import BadFile, ReadPolicy, SkipLog
from torchclr.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".npy")
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
SAMPLE = "sample"
SPLIT_NAMES = ("train", "test", "val", "valid", "validation", "unlabeled", "unlabelled")
UNLABELLED = -1


@dataclass
class ImageSet:
    """Images by index as uint8 [C, H, W] (C: `policy.channels`); either held in `tensor` or decoded from files by `read_bytes`.

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
        return decode_image(self.read_bytes(name), f"{self.origin}/{name}", self.policy.max_image_pixels, draft_side,
                            channels=self.policy.channels, value_range=self.policy.value_range)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        """The images at `indices`, in that order (no fingerprint: a cache of the whole set is not theirs). The skip
        log is shared, so that what a subset skips counts for the set."""
        labels = [self.labels[i] for i in indices]
        if self.tensor is not None:
            return replace(self, tensor=self.tensor[list(indices)], labels=labels, fingerprint="", sizes=None
                           if self.sizes is None else self.sizes[list(indices)])
        return replace(self, names=[self.names[i] for i in indices], labels=labels, fingerprint="")

    def identity(self) -> dict[str, Any]:
        """What `pretrain --resume` compares with the checkpoint's data: the count and a digest of the names and
        labels in order, not of where the files lie or when they were touched (a copied folder is the same data)."""
        digest = hashlib.sha256(np.asarray(self.labels, dtype=np.int64).tobytes())
        for name in self.names:
            digest.update(name.encode() + b"\0")
        return {"images": len(self), "sha256": digest.hexdigest()}


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
        if policy.channels != 3:
            raise UserError(f"data {spec}: {kind}'s images are RGB; --in-channels {policy.channels} takes image files "
                            "or .npy arrays of that many bands")
        return _open_torchvision(kind, root, split, download)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data path {spec} does not exist")
    if is_tar_shard(path):
        return _open_shards(path, spec, policy)
    if path.is_file():
        if not is_zip(path):
            raise UserError(f"data path {spec} is a file but not a zip archive of images (or a .tar shard)")
        return _open_zip(path, split, spec, policy)
    if not path.is_dir():
        raise UserError(f"data path {spec} is neither a folder nor a zip archive (a FIFO or a device?)")
    base = path / split if (path / split).is_dir() else path
    if shard_paths(base):
        return _open_shards(base, str(base), policy)
    return _open_folder(path, split, policy)


def split_names(spec: str) -> list[str]:
    """The splits `spec` offers: its sub-folders (or top-level zip folders) named like splits, or a torchvision set's."""
    kind, _, root = spec.partition(":")
    if spec == SAMPLE:
        return ["test", "train"]
    if kind in TORCHVISION_SETS and root:
        return ["test", "train", "unlabeled"] if kind == "stl10" else ["test", "train"]
    path = Path(spec).expanduser()
    if path.is_dir():
        found = {child.name for child in path.iterdir() if child.is_dir()}
    elif is_zip(path):
        found = {info.filename.split("/")[0] for info in zip_members(path, spec) if "/" in info.filename}
    else:
        return []
    return sorted(found & set(SPLIT_NAMES))


def check_split(spec: str, split: str) -> None:
    """Refuse `split` in one line when `spec` has splits and it is not one of them (a typo would embed the whole tree)."""
    splits = split_names(spec)
    if splits and split not in splits:
        raise UserError(f"--split {split!r} is not a split of {spec}; it has {', '.join(splits)}")


def has_split(spec: str, split: str) -> bool:
    """Whether `spec` offers `split` as its own sub-folder (or is a torchvision set / the sample)."""
    kind, _, root = spec.partition(":")
    if spec == SAMPLE or (kind in TORCHVISION_SETS and root):
        return True
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / split).is_dir()
    if is_zip(path):
        return any(info.filename.startswith(f"{split}/") for info in zip_members(path, spec))
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
    if policy.channels != 3:  # and what is decoded (a 3-channel set keeps the fingerprint, and cache, it always had)
        digest.update(f"channels {policy.channels}".encode())
    return ImageSet(origin=origin, labels=labels, classes=classes, names=PackedNames.build(names), read_bytes=read,
                    fingerprint=digest.hexdigest(), policy=policy, skipped=skipped)


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
                    info = check_listed_file(full, f"{base}/{name}", policy.max_file_bytes)
                except BadFile as bad:
                    skipped.add(bad)
                    continue
                digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
                names.append(name)

    def read(name: str) -> bytes:  # listed as a regular file; read no more than the limit
        return read_bytes(base / name, f"{base}/{name}", policy.max_file_bytes)

    return _finish(str(base), names, read, digest, policy, skipped)


def _open_shards(path: Path, origin: str, policy: ReadPolicy) -> ImageSet:
    """Tar shards in the webdataset layout (see `torchclr.data.shards`); classes are the .cls indices."""
    index = index_shards(path, IMAGE_EXTENSIONS)
    if index is None:
        raise UserError(f"data path {origin} holds no images in its .tar shards (looked for {', '.join(IMAGE_EXTENSIONS)})")
    labels = index.labels if index.labels is not None else [UNLABELLED] * len(index.names)
    classes = [str(c) for c in range(max(labels) + 1)] if index.labels is not None else []
    fingerprint = index.fingerprint
    if policy.channels != 3:  # decoded differently: another cache (as `_finish` keys folders and zips)
        fingerprint = hashlib.sha256(f"{fingerprint} channels {policy.channels}".encode()).hexdigest()
    return ImageSet(origin=origin, labels=labels, classes=classes, names=index.names, read_bytes=index.reader,
                    fingerprint=fingerprint, policy=policy)


def _open_zip(path: Path, split: str, label: str, policy: ReadPolicy) -> ImageSet:
    infos = zip_members(path, label)
    prefix = f"{split}/" if any(info.filename.startswith(f"{split}/") for info in infos) else ""
    origin = f"{label}:{split}" if prefix else label  # every skip names a member origin/name, as its decoder does
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
                skipped.add(BadFile(f"{origin}/{name}", kind, f"the member holds {info.file_size} bytes "
                                    f"(limit: --max-file-mb {policy.max_file_bytes >> 20})"))
                continue
            names.append(name)
            digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    reader = ZipMemberReader(path, prefix, origin, policy.max_file_bytes)
    return _finish(origin, names, reader, digest, policy, skipped)


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
