"""The hostile-user catalogue, made here: every bad setting, file or folder either ends the command in one line
(exit code 2, no traceback) or is skipped and counted under the right kind."""

from __future__ import annotations

import errno
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from conftest import png_bytes
from torchclr import checkpoint
from torchclr.cli import main
from torchclr.data import cache
from torchclr.data.cache import materialize
from torchclr.data.skips import ReadPolicy
from torchclr.data.sources import open_images

ROOT = os.geteuid() == 0


def _png(side: int = 12, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG header declaring width x height pixels (and no pixel data): what a decompression bomb looks like first."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _good_folder(path: Path, count: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (path / f"good{i:03d}.png").write_bytes(_png(seed=i))
    return path


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture, notes: int = 0) -> str:
    """Run the command; it must exit 2 with one error line on stderr (after `notes` 'note:' lines)."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == notes + 1 and err[-1].startswith("torchclr: error: "), err
    assert all("note:" in line for line in err[:-1]), err
    return err[-1]


# ---- settings: each is refused before anything runs, naming the option as the user wrote it ----

OPTION_CASES = {
    "lr nan": (["--lr", "nan"], "--lr must be a finite number"),
    "lr inf": (["--lr", "inf"], "--lr must be a finite number"),
    "weight decay -inf": (["--weight-decay=-inf"], "--weight-decay must be a finite number"),
    "crop scale nan": (["--crop-scale", "nan,1"], "--crop-scale must be a finite number"),
    "temperature overflow": (["--temperature", "1e999"], "--temperature must be a finite number"),
    "batch size 1": (["--batch-size", "1"], "--batch-size must be at least 2"),
    "crop scale out of range": (["--crop-scale", "0.5,2"], "--crop-scale must satisfy"),
    "pixel limit 0": (["--max-image-pixels", "0"], "--max-image-pixels must be > 0"),
    "negative save interval": (["--save-every-steps", "-1"], "--save-every-steps must be >= 0"),
}


@pytest.mark.parametrize("name", OPTION_CASES)
def test_bad_option_values(name: str, capsys: pytest.CaptureFixture) -> None:
    argv, needle = OPTION_CASES[name]
    assert needle in _one_line_error(["pretrain", *argv], capsys)


YAML_CASES: dict[str, tuple[bytes, str]] = {
    "weight_decay .nan": (b"weight_decay: .nan\n", "key weight_decay must be a finite number"),
    "lr .inf": (b"lr: .inf\n", "key lr must be a finite number"),
    "crop_scale with nan": (b"crop_scale: [.nan, 1.0]\n", "key crop_scale must be a finite number"),
    "batch_size 1": (b"batch_size: 1\n", "key batch_size must be at least 2"),
    "binary file": (_png(), "not a text file"),
    "latin-1 text": ("lr: 0.1  # réglé\n".encode("latin-1"), "not a text file"),
    "nul bytes": (b"lr: 0.1\n\0\0\0", "binary file"),
    "nested 10000 deep": (b"[" * 10000 + b"]" * 10000, "config"),
}


@pytest.mark.parametrize("name", YAML_CASES)
def test_bad_config_files(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, needle = YAML_CASES[name]
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    line = _one_line_error(["pretrain", "--config", str(path)], capsys)
    assert needle in line and "bad.yaml" in line


def test_config_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert str(tmp_path) in _one_line_error(["pretrain", "--config", str(tmp_path)], capsys)


# ---- data that cannot give a single step: one line before training ----

def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _text_files(path: Path, count: int) -> Path:
    path.mkdir()
    for i in range(count):
        (path / f"{i}.png").write_text("hello")
    return path


DATA_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty folder": (lambda p: (p / "d").mkdir() or p / "d", "holds no images"),
    "only a FIFO (never opened)": (lambda p: (p / "d").mkdir() or _fifo(p / "d" / "pipe.jpg").parent, "1 not a regular file"),
    "only zero-byte files": (lambda p: (p / "d").mkdir() or (p / "d" / "a.jpg").write_bytes(b"") or p / "d", "1 zero-byte"),
    "only text named .png": (lambda p: _text_files(p / "d", 3), "every image file is bad: skipped 3 of 3 image files (3 not an image)"),
    "data path is a FIFO": (lambda p: _fifo(p / "pipe"), "neither a folder nor a zip"),
    "zip whose members all fail their CRC": (lambda p: _zip_with(p / "a.zip", {f"{i}.png": _png(seed=i) for i in range(4)}, corrupt=True),
                                              "every image file is bad: skipped 4 of 4 image files (4 bad CRC)"),
    "too few usable images for a step": (lambda p: _good_folder(p / "d", 1), "fewer than --batch-size"),
}


@pytest.mark.parametrize("name", DATA_CASES)
def test_data_with_no_usable_step(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make, needle = DATA_CASES[name]
    data = make(tmp_path)
    line = _one_line_error(["pretrain", "--data", str(data), "--out-dir", str(tmp_path / "out"), "--batch-size", "2",
                            "--image-size", "8", "--no-progress"], capsys)
    assert needle in line and str(data) in line


def test_strict_stops_at_the_first_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _good_folder(tmp_path / "d", 4)
    (data / "cut.png").write_bytes(_png()[:40])
    line = _one_line_error(["pretrain", "--data", str(data), "--out-dir", str(tmp_path / "out"), "--strict", "--batch-size", "2", "--no-progress"], capsys)
    assert "cut.png" in line and "--strict" in line


# ---- bad files among good ones: skipped, counted by kind, the rest kept ----

def _zip_with(path: Path, members: dict[str, bytes], corrupt: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    if corrupt:  # flip one byte inside every member's compressed data: a CRC (or inflate) error when read
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
                raw[start + info.compress_size // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    return path


FOLDER_SKIPS: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-byte": (lambda d: (d / "zero.jpg").write_bytes(b""), "zero-byte"),
    "truncated PNG": (lambda d: (d / "cut.png").write_bytes(_png(40)[:200]), "truncated or corrupt"),
    "text named .jpg": (lambda d: (d / "notes.jpg").write_text("not a picture"), "not an image"),
    "HTML error page named .jpg": (lambda d: (d / "404.jpg").write_text("<html>Not Found</html>"), "not an image"),
    "JPEG header only": (lambda d: (d / "head.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"), "truncated or corrupt"),
    "decompression bomb 20000x20000": (lambda d: (d / "bomb.png").write_bytes(_bomb_png()), "too many pixels"),
    "FIFO named .jpg": (lambda d: _fifo(d / "pipe.jpg"), "not a regular file"),
    "symlink to /dev/zero": (lambda d: (d / "zero_dev.jpg").symlink_to("/dev/zero"), "not a regular file"),
    "dangling symlink": (lambda d: (d / "gone.jpg").symlink_to(d / "missing.jpg"), "dangling or looping symlink"),
    "symlink loop": (lambda d: ((d / "a.jpg").symlink_to(d / "b.jpg"), (d / "b.jpg").symlink_to(d / "a.jpg")), "dangling or looping symlink"),
    "file over --max-file-mb": (lambda d: (d / "huge.png").write_bytes(_png() + b"\0" * (1 << 20)), "too large"),
    "unreadable file": (lambda d: ((d / "secret.png").write_bytes(_png()), (d / "secret.png").chmod(0)), "unreadable"),
}


@pytest.mark.parametrize("name", FOLDER_SKIPS)
def test_bad_files_in_a_folder_are_skipped_and_counted(name: str, tmp_path: Path) -> None:
    if name == "unreadable file" and ROOT:
        pytest.skip("root reads files whatever their mode")
    make, kind = FOLDER_SKIPS[name]
    data = _good_folder(tmp_path / "d", 3)
    make(data)
    images = materialize(open_images(str(data), "train", policy=ReadPolicy(max_file_bytes=1 << 20)), 12)
    assert len(images) == 3 and images.tensor is not None and images.tensor.shape == (3, 3, 12, 12)
    assert [bad.kind for bad in images.skipped.entries] == [kind] * len(images.skipped.entries)
    assert 1 <= len(images.skipped) <= 2  # the loop's two links are both listed
    if name == "file over --max-file-mb":
        assert "bytes is over" in images.skipped.entries[0].detail  # caught by its size when listed: never read


# make(folder, folder_in_the_zip): the zip, holding the bad member (under folder_in_the_zip, e.g. "train/a/")
ZIP_SKIPS: dict[str, tuple[Callable[..., Path], str]] = {
    "member with a bad CRC": (lambda p, at="": _zip_with(p / "z.zip", {f"{at}bad.png": _png(seed=9)}, corrupt=True), "bad CRC"),
    "member over --max-file-mb": (lambda p, at="": _zip_with(p / "z.zip", {f"{at}big.png": _png() + b"\0" * (1 << 20)}), "too large"),
    "zero-byte member": (lambda p, at="": _zip_with(p / "z.zip", {f"{at}empty.png": b""}), "zero-byte"),
    "member that is not an image": (lambda p, at="": _zip_with(p / "z.zip", {f"{at}readme.png": b"plain text"}), "not an image"),
}


@pytest.mark.parametrize("name", ZIP_SKIPS)
def test_bad_zip_members_are_skipped_and_counted(name: str, tmp_path: Path) -> None:
    make, kind = ZIP_SKIPS[name]
    archive = make(tmp_path)
    with zipfile.ZipFile(archive, "a") as handle:
        for i in range(3):
            handle.writestr(f"good{i}.png", _png(seed=i))
    images = materialize(open_images(str(archive), "train", policy=ReadPolicy(max_file_bytes=1 << 20)), 12)
    assert len(images) == 3 and [bad.kind for bad in images.skipped.entries] == [kind]


# ---- checkpoints: any malformed file is refused in one line ----

def _safetensors(metadata: dict[str, str] | None) -> bytes:
    return safetensors_bytes({"encoder.w": torch.zeros(2)}, metadata=metadata)


def _header_claiming(size: int) -> bytes:
    return struct.pack("<Q", size) + b"{" + b" " * 64


CHECKPOINT_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "random bytes": (lambda: os.urandom(256), "not a readable safetensors"),
    "empty file": (lambda: b"", "not a readable safetensors"),
    "truncated": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": "{}"})[:-4], "not a readable safetensors"),
    "a pickle (torch.save)": (lambda: _torch_save_bytes(), "not a readable safetensors"),
    "header claims 90 MB": (lambda: _header_claiming(90 << 20), "header claims"),
    "no torchclr format": (lambda: _safetensors({"format": "pt"}), "not written by torchclr"),
    "metadata not JSON": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": "{not json"}), "not valid JSON"),
    "metadata a JSON list": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": "[1, 2]"}), "not a JSON object"),
    "metadata nested 100k deep": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": "[" * 100_000 + "]" * 100_000}), "not valid JSON"),
    "encoder without model/config": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": '{"kind": "encoder"}'}), "lacks metadata model, config"),
    "model metadata a string": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": '{"kind": "encoder", "model": "x", "config": {}}'}), "malformed metadata"),
    "model metadata without arch": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": '{"kind": "encoder", "model": {}, "config": {}}'}), "malformed metadata"),
    "neither encoder nor training": (lambda: _safetensors({"format": checkpoint.FORMAT, "json": '{"kind": "recipe"}'}), "neither an encoder"),
}


def _torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_malformed_checkpoints(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make, needle = CHECKPOINT_CASES[name]
    path = tmp_path / "model.safetensors"
    path.write_bytes(make())
    line = _one_line_error(["evaluate", "--checkpoint", str(path)], capsys)
    assert needle in line and str(path) in line


def test_checkpoint_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in _one_line_error(["evaluate", "--checkpoint", str(tmp_path)], capsys)


@pytest.mark.slow
def test_stray_file_in_the_checkpoints_folder_is_ignored_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, out = _good_folder(tmp_path / "d", 4), tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "epoch-1.safetensors").write_bytes(b"not ours")
    line = _one_line_error(["pretrain", "--data", str(data), "--out-dir", str(out), "--batch-size", "2", "--image-size", "8",
                            "--resume", "--no-progress"], capsys, notes=1)
    assert "no checkpoint" in line


# ---- caches: an unusable cache file or folder costs a decode, never the run ----

def test_pickled_npy_in_the_cache_is_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _good_folder(tmp_path / "d", 3)
    images = open_images(str(data), "train")
    cache_file = tmp_path / "cache" / f"{images.fingerprint[:24]}-12px.npy"
    cache_file.parent.mkdir()
    np.save(cache_file, np.array([{"payload": "would run on unpickling"}], dtype=object), allow_pickle=True)
    held = materialize(images, 12, tmp_path / "cache")
    assert held.tensor is not None and held.tensor.shape == (3, 3, 12, 12)
    assert "ignoring unreadable cache file" in capsys.readouterr().err
    assert np.load(cache_file, allow_pickle=False).dtype == np.uint8  # rewritten with the real data


def test_full_cache_folder_keeps_the_data_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def no_space(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache, "replace_file", no_space)
    held = materialize(open_images(str(_good_folder(tmp_path / "d", 3)), "train"), 12, tmp_path / "cache")
    assert held.tensor is not None and len(held.tensor) == 3
    assert "No space left on device" in capsys.readouterr().err


def test_skipped_files_are_remembered_by_the_cache(tmp_path: Path) -> None:
    data = _good_folder(tmp_path / "d", 3)
    (data / "cut.png").write_bytes(_png()[:60])
    first = materialize(open_images(str(data), "train"), 12, tmp_path / "cache")
    again = materialize(open_images(str(data), "train"), 12, tmp_path / "cache")
    assert again.tensor is not None and first.tensor is not None and torch.equal(first.tensor, again.tensor)
    assert [b.where for b in again.skipped.entries] == [b.where for b in first.skipped.entries] and len(first.skipped) == 1
    assert (tmp_path / "cache").glob("*.skipped.json")


# ---- 16-bit and float images: scaled, not clipped ----

def test_sixteen_bit_png_is_scaled_like_a_reference_conversion(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = open_images(str(tmp_path), "train").image(0)
    reference = np.round(values.astype(np.float64) / 65535 * 255).astype(np.uint8)  # cv2/skimage's img_as_ubyte rule
    assert image.shape == (3, 16, 16) and all(np.array_equal(image[c].numpy(), reference) for c in range(3))


def test_float_tiff_is_scaled_like_a_reference_conversion(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "light.tif")
    image = open_images(str(tmp_path), "train").image(0)
    reference = np.round(values.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(image[0].numpy(), reference) and image.max() == 255
