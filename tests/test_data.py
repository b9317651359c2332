from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, write_image_folder, zip_folder
from torchclr.data.cache import materialize
from torchclr.data.skips import ReadPolicy
from torchclr.data.sources import has_split, open_images
from torchclr.errors import UserError
from torchclr.transforms.centre import square


def test_folder_with_class_subfolders_is_labelled(tiny_folder: Path) -> None:
    images = open_images(str(tiny_folder), "train")
    assert len(images) == 64 and images.classes == list(CLASSES)
    assert sorted(set(images.labels)) == [0, 1] and images.labels.count(0) == 32
    img = images.image(0)
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    expected = np.asarray(Image.open(tiny_folder / "train" / "circle" / "0000.png").convert("RGB"))
    assert torch.equal(img, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_zip_reads_the_same_images_in_place(tiny_folder: Path, tmp_path: Path) -> None:
    archive = zip_folder(tiny_folder, tmp_path / "tiny.zip")
    from_zip, from_folder = open_images(str(archive), "test"), open_images(str(tiny_folder), "test")
    assert from_zip.labels == from_folder.labels and from_zip.classes == from_folder.classes
    assert all(torch.equal(from_zip.image(i), from_folder.image(i)) for i in range(len(from_zip)))
    assert has_split(str(archive), "test") and not has_split(str(archive), "val")


def test_loose_images_are_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (20, 10), (i, 0, 0)).save(tmp_path / f"{i}.jpg")
    images = open_images(str(tmp_path), "train")
    assert len(images) == 3 and not images.labelled and images.classes == []


def test_shipped_sample_is_class_balanced() -> None:
    train, test = open_images("sample", "train"), open_images("sample", "test")
    assert len(train) == 5000 and len(test) == 1000 and len(train.classes) == 10
    assert np.bincount(train.labels).tolist() == [500] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert train.image(0).shape == (3, 32, 32)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no images"),
    (lambda p: (p / "notes.txt").write_text("hi") and p, "holds no images"),
    (lambda p: (p / "file.txt").write_text("hi") and p / "file.txt", "not a zip"),
])
def test_bad_data_paths_name_the_path(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        open_images(str(path), "train")
    assert str(path) in str(info.value)


def test_corrupt_image_is_skipped_or_named_under_strict(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": 2})
    broken = tmp_path / "train" / "circle" / "0001.png"
    broken.write_bytes(b"\x89PNG not really")
    images = materialize(open_images(str(tmp_path), "train"))
    assert len(images) == 3 and images.tensor is not None and len(images.tensor) == 3
    assert [bad.where.rsplit("/", 2)[-2:] for bad in images.skipped.entries] == [["circle", "0001.png"]]
    assert "circle/0001.png" not in images.names and images.labels == [0, 1, 1]
    with pytest.raises(UserError, match="0001.png.*--strict"):
        materialize(open_images(str(tmp_path), "train", policy=ReadPolicy(strict=True)))


def test_materialize_squares_mixed_sizes() -> None:
    image = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 40, 60)
    out = square(image, 20)
    assert out.shape == (3, 20, 20)
    assert torch.equal(square(out, 20), out)


def test_cache_file_is_reused_then_rebuilt_when_the_source_changes(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", {"train": 4})
    cache = tmp_path / "cache"
    first = materialize(open_images(str(data), "train"), cache_dir=cache).tensor
    files = list(cache.glob("*.npy"))
    assert len(files) == 1
    again = materialize(open_images(str(data), "train"), cache_dir=cache).tensor
    assert torch.equal(first, again)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(data / "train" / "circle" / "0000.png")
    changed = materialize(open_images(str(data), "train"), cache_dir=cache).tensor
    assert len(list(cache.glob("*.npy"))) == 2
    assert torch.equal(changed[0, 0], torch.full((32, 32), 255, dtype=torch.uint8))


def test_torchvision_cifar10_reads_local_files(tmp_path: Path) -> None:
    """The torchvision path, fed with files made here in CIFAR's python-pickle layout (no download)."""
    import hashlib
    import pickle

    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    files = {"batches.meta": meta}
    for name, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list:
        files[name] = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    for name, content in files.items():
        (folder / name).write_bytes(pickle.dumps(content))
    # Point torchvision's integrity check at the files just written.
    sums = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in files}
    patched = {
        "train_list": [[n, sums[n]] for n, _ in torchvision.datasets.CIFAR10.train_list],
        "test_list": [[n, sums[n]] for n, _ in torchvision.datasets.CIFAR10.test_list],
        "meta": {**torchvision.datasets.CIFAR10.meta, "md5": sums["batches.meta"]},
    }
    original = {k: getattr(torchvision.datasets.CIFAR10, k) for k in patched}
    try:
        for key, value in patched.items():
            setattr(torchvision.datasets.CIFAR10, key, value)
        train = open_images(f"cifar10:{tmp_path}", "train")
        test = open_images(f"cifar10:{tmp_path}", "test")
    finally:
        for key, value in original.items():
            setattr(torchvision.datasets.CIFAR10, key, value)
    assert len(train) == 20 and len(test) == 4 and train.classes[0] == "c0"
    assert train.tensor is not None and train.tensor.shape == (20, 3, 32, 32)
    with pytest.raises(UserError, match="cifar10"):
        open_images(f"cifar10:{tmp_path / 'nothing'}", "train")


def test_large_sets_decode_in_worker_processes_with_the_same_pixels_and_skips(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PARALLEL_FROM images, DataLoader workers decode: every row equals image i decoded alone, both for the
    square evaluation views and the padded training store, and broken files are skipped and named either way."""
    from torchclr.data import cache

    monkeypatch.setattr(cache, "PARALLEL_FROM", 10)
    rng = np.random.default_rng(0)
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for i in range(40):
            buffer = io.BytesIO()
            size = (12, 8) if i % 3 else (8, 8)
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
            handle.writestr(f"train/a/{i:03d}.png", buffer.getvalue() if i not in (5, 17) else b"not an image")
    held = materialize(open_images(str(archive), "train"), 8)
    padded = cache.materialize_padded(open_images(str(archive), "train"), 12)
    for result in (held, padded):
        assert sorted(bad.where.rsplit("/", 1)[-1] for bad in result.skipped.entries) == ["005.png", "017.png"]
        assert len(result) == 38 and "005.png" not in [n.rsplit("/", 1)[-1] for n in result.names]
    source = open_images(str(archive), "train")
    for row, name in enumerate(held.names):
        alone = source.image(list(source.names).index(name))
        assert torch.equal(held.tensor[row], square(alone, 8))
        height, width = padded.sizes[row].tolist()
        assert torch.equal(padded.tensor[row, :, :height, :width], alone)
        assert padded.tensor[row, :, height:, :].sum() == 0 and padded.tensor[row, :, :, width:].sum() == 0
