"""JPEGs decoded in batches on the training device (`--decode device`), exercised here on the CPU: the same
functions a GPU runs, checked against the worker path (PIL) that they replace."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchclr.cli import main
from torchclr.data.device_decode import DRAFT_ABOVE, EncodedJpeg, decode_on_device
from torchclr.data.sources import open_images
from torchclr.data.streaming import BoundedImages, StreamedViews, pad_batch
from torchclr.transforms import AugmentSpec

SIDE = 40


def _smooth_jpeg(width: int, height: int, seed: int) -> bytes:
    """Low-frequency noise (photo-like: resizing it from a draft or a full decode gives nearly the same pixels)."""
    small = np.random.default_rng(seed).integers(0, 255, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """Small and mid-size JPEGs (decoded on the device), a huge one and a PNG (decoded in the worker), a cut JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, (width, height) in enumerate([(30, 20), (40, 40), (36, 24), (120, 90), (90, 150), (64, 48)]):
        (folder / f"a{index}.jpg").write_bytes(_smooth_jpeg(width, height, index))
    (folder / "huge.jpg").write_bytes(_smooth_jpeg(DRAFT_ABOVE * SIDE + 16, 2 * SIDE, 7))
    Image.new("RGB", (50, 30), (200, 10, 10)).save(folder / "red.png")
    whole = _smooth_jpeg(80, 60, 9)
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return folder


def test_device_decoding_gives_the_worker_paths_images(mixed_folder: Path) -> None:
    images = open_images(str(mixed_folder), "train")
    kept, workers = BoundedImages(images, SIDE, keep_jpegs=True), BoundedImages(images, SIDE)
    items = [kept[i] for i in range(len(images))]
    kinds = {name: type(item).__name__ for name, item in zip(images.names, items)}
    assert {name for name, kind in kinds.items() if kind == "EncodedJpeg"} == {f"a{i}.jpg" for i in range(6)} | {"cut.jpg"}
    assert kinds["huge.jpg"] == kinds["red.png"] == "Tensor"  # draft mode and PNG stay in the worker

    on_device, reference = pad_batch(decode_on_device(items, SIDE, torch.device("cpu"))), pad_batch([workers[i] for i in range(len(images))])
    assert torch.equal(on_device[1], reference[1])  # every image fitted to the same size
    assert len(on_device[2]) == len(reference[2]) == 1 and "cut.jpg" in on_device[2][0] and "truncated" in on_device[2][0]
    for position, name in enumerate(images.names):
        height, width = on_device[1][position].tolist()
        ours, theirs = on_device[0][position, :, :height, :width].int(), reference[0][position, :, :height, :width].int()
        if name == "cut.jpg":
            continue  # replaced by another image of the batch, the same one on both paths
        if max(Image.open(mixed_folder / name).size) <= SIDE:
            assert torch.equal(ours, theirs), name  # same libjpeg decode, no resize
        else:
            assert (ours - theirs).abs().float().mean() < 4, name  # full decode + resize vs the worker's draft + resize


def test_a_batch_with_a_broken_jpeg_keeps_its_good_ones(mixed_folder: Path) -> None:
    good = EncodedJpeg(torch.frombuffer(bytearray((mixed_folder / "a1.jpg").read_bytes()), dtype=torch.uint8), "a1.jpg")
    bad = EncodedJpeg(torch.frombuffer(bytearray((mixed_folder / "cut.jpg").read_bytes()), dtype=torch.uint8), "x/cut.jpg")
    out = decode_on_device([good, bad, "x/other.jpg: not an image"], SIDE, torch.device("cpu"))
    assert isinstance(out[0], torch.Tensor) and out[0].shape == (3, 40, 40)
    assert out[1] == "cannot use image x/cut.jpg: Image is incomplete or truncated"
    assert out[2] == "x/other.jpg: not an image"


def test_streamed_views_decoding_on_the_device_match_the_workers(mixed_folder: Path) -> None:
    images = open_images(str(mixed_folder), "train")
    spec = AugmentSpec(image_size=16, blur_p=0.0)
    runs = [list(StreamedViews(images, spec, batch_size=3, device=torch.device("cpu"), seed=0, stored_side=SIDE, workers=1,
                               jpegs_on_device=flag).epoch(0))
            for flag in (False, True)]
    assert len(runs[0]) == len(runs[1]) == len(images) // 3
    for (first, second), (first_d, second_d) in zip(*runs):
        assert first.shape == first_d.shape == (3, 3, 16, 16)
        assert (first - first_d).abs().mean() < 0.03 and (second - second_d).abs().mean() < 0.03


@pytest.mark.slow
def test_pretrain_with_device_decoding_runs_and_says_so(mixed_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--data", str(mixed_folder), "--data-mode", "stream", "--decode", "device", "--image-size", "16",
                 "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--arch", "resnet18", "--workers", "1",
                 "--out-dir", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0
    assert "JPEGs decoded on cpu in batches (--decode device)" in out.out + out.err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
