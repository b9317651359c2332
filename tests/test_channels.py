"""--in-channels (issue 21): 1- and 4-channel images read through the one reader, N-channel stems (and RGB weights
adapted to them), colour jitter replaced by a per-band intensity jitter, and a 4-channel .npy folder and a 1-channel
PNG folder trained, embedded and exported; bad input is a counted skip or one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from test_bad_inputs import _one_line_error
from torchclr.cli import main
from torchclr.config import PretrainConfig
from torchclr.data.pipeline import batch_augment
from torchclr.data.reader import decode_image, header_size
from torchclr.data.skips import BadFile, ReadPolicy
from torchclr.data.sources import open_images
from torchclr.errors import UserError
from torchclr.init_weights import load_initial_weights
from torchclr.models import build_encoder
from torchclr.models.channels import adapt_rgb_weight
from torchclr.pretrained import load_encoder
from torchclr.transforms import AugmentSpec, BatchAugment
from torchclr.transforms.bands import adjust_band_brightness, adjust_band_contrast

TINY = ["--epochs", "2", "--warmup-epochs", "0", "--batch-size", "4", "--image-size", "8", "--no-progress",
        "--device", "cpu", "--health-every", "0", "--no-final-report"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---- the reader ----

def test_npy_in_either_layout_and_16_bit_is_scaled_by_65535() -> None:
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (4, 5, 6), dtype=np.uint16)
    got = decode_image(_npy(deep), "a.npy", channels=4)
    assert got.dtype == torch.uint8 and got.shape == (4, 5, 6)
    assert torch.equal(got, torch.from_numpy(np.round(deep / 65535 * 255).astype(np.uint8)))
    last = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)  # [H, W, C]
    assert torch.equal(decode_image(_npy(last), "b.npy", channels=4), torch.from_numpy(last).permute(2, 0, 1))
    assert header_size(_npy(last), "b.npy", channels=4) == (5, 6)
    flat = rng.integers(0, 256, (5, 6), dtype=np.uint8)  # [H, W] is one band
    assert torch.equal(decode_image(_npy(flat), "c.npy", channels=1)[0], torch.from_numpy(flat))


def _png16(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_value_range_maps_12_bit_data_onto_all_256_levels(channels: int) -> None:
    twelve = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # 12-bit values in a 16-bit file
    twelve[0, 0] = 5000  # above the range: clipped to white
    data = _png16(twelve)
    full = decode_image(data, "t.png", channels=channels)  # the type's range: 0..65535 onto 0..255
    assert int(full.max()) == round(5000 * 255 / 65535) and len(torch.unique(full)) <= 18  # 16 levels of 256
    ranged = decode_image(data, "t.png", channels=channels, value_range=(0.0, 4095.0))
    expected = np.clip(np.round(twelve.astype(np.float64) * 255 / 4095), 0, 255).astype(np.uint8)
    assert ranged.shape == (channels, 16, 16)
    assert all(torch.equal(band, torch.from_numpy(expected)) for band in ranged)
    assert len(torch.unique(ranged)) >= 250  # nearly all 256 levels, against 17 above
    npy = decode_image(_npy(twelve[None]), "t.npy", channels=1, value_range=(0.0, 4095.0))  # arrays alike
    assert torch.equal(npy[0], torch.from_numpy(expected))
    eight = np.full((4, 4), 200, np.uint8)  # 8-bit images are taken as they are
    assert int(decode_image(_npy(eight), "e.npy", channels=1, value_range=(0.0, 4095.0)).max()) == 200


def test_a_value_range_run_reads_every_later_image_with_its_range(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    data = tmp_path / "deep"
    data.mkdir()
    for i in range(6):
        (data / f"{i}.png").write_bytes(_png16(rng.integers(0, 4096, (12, 12))))
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--in-channels", "1", "--value-range", "0,4095", "--out-dir", str(run),
                 "--workers", "0", *TINY]) == 0
    encoder, transform, info = load_encoder(run / "encoder.safetensors")
    assert info["config"].value_range == (0.0, 4095.0)
    assert main(["embed", "--checkpoint", str(run / "encoder.safetensors"), "--data", str(data), "--out",
                 str(tmp_path / "h.npy"), "--no-progress", "--workers", "0"]) == 0
    first = sorted(data.iterdir())[0]
    image = decode_image(first.read_bytes(), str(first), channels=1, value_range=(0.0, 4095.0))
    with torch.no_grad():
        expected = encoder(transform(image)[None])[0].numpy()
    rows = (tmp_path / "h.csv").read_text().splitlines()[1:]  # index,name,label,class
    row = next(i for i, line in enumerate(rows) if line.split(",")[1] == first.name)
    assert np.allclose(np.load(tmp_path / "h.npy")[row], expected, atol=1e-4)
    assert "--value-range must be LOW,HIGH with LOW < HIGH, got 4095,0" in _one_line_error(
        ["pretrain", "--data", str(data), "--value-range", "4095,0", *TINY], capsys)
    assert "--value-range must be a pair of numbers, got '4095'" in _one_line_error(
        ["pretrain", "--data", str(data), "--value-range", "4095", *TINY], capsys)


def test_multi_page_tiff_is_one_band_a_page_and_grayscale_png_one_channel() -> None:
    rng = np.random.default_rng(1)
    pages = [rng.integers(0, 256, (7, 9), dtype=np.uint8) for _ in range(4)]
    buffer = io.BytesIO()
    Image.fromarray(pages[0]).save(buffer, "TIFF", save_all=True, append_images=[Image.fromarray(p) for p in pages[1:]])
    assert torch.equal(decode_image(buffer.getvalue(), "s.tif", channels=4), torch.from_numpy(np.stack(pages)))
    assert header_size(buffer.getvalue(), "s.tif", channels=4) == (7, 9)
    png = io.BytesIO()
    Image.fromarray(pages[0]).save(png, "PNG")
    assert torch.equal(decode_image(png.getvalue(), "g.png", channels=1), torch.from_numpy(pages[0])[None])


def test_another_channel_count_is_a_bad_file_from_the_header_on() -> None:
    rgb = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(rgb, "JPEG")
    for read in (decode_image, header_size):
        with pytest.raises(BadFile) as caught:
            read(rgb.getvalue(), "x.jpg", channels=4)
        assert caught.value.kind == "not 4-channel" and "has 3 channels" in caught.value.detail
    with pytest.raises(BadFile, match="has 3 channels"):
        decode_image(_npy(np.zeros((3, 8, 8), np.uint8)), "y.npy", channels=4)
    with pytest.raises(BadFile) as caught:
        decode_image(_npy(np.zeros((4, 8, 8), np.complex64)), "z.npy", channels=4)
    assert caught.value.kind == "not an image"


# ---- the network ----

def test_the_first_conv_takes_the_channels() -> None:
    assert build_encoder("resnet18", 32, in_channels=4).net.conv1.weight.shape == (64, 4, 3, 3)  # CIFAR stem
    assert build_encoder("resnet18", 128, in_channels=1).net.conv1.weight.shape == (64, 1, 7, 7)
    mobile = build_encoder("mobilenet_v3_small", 96, in_channels=5)
    assert mobile.net.features[0][0].in_channels == 5 and mobile(torch.rand(2, 5, 96, 96)).shape == (2, 576)


def test_rgb_weights_are_averaged_repeated_and_scaled(tmp_path: Path) -> None:
    weight = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).view(2, 3, 1, 2)
    by_hand = torch.tensor([[[[2.0, 3.0]]], [[[8.0, 9.0]]]]) * 3 / 4  # channel means of each output, x 3/N
    assert torch.equal(adapt_rgb_weight(weight, 4), by_hand.repeat(1, 4, 1, 1))
    # through --init: a torchvision file's conv1 comes in adapted, and a gray image gives the RGB network's h
    rgb_net = torchvision.models.resnet18(weights=None)
    torch.save(rgb_net.state_dict(), tmp_path / "rgb.pth")
    gray = build_encoder("resnet18", 96, cifar_stem=False, in_channels=2)
    line = load_initial_weights(gray, str(tmp_path / "rgb.pth"))
    assert "averaged for 2 channels" in line
    stem = rgb_net.conv1.weight.detach()
    assert torch.allclose(gray.net.conv1.weight, (stem[:, 0] + stem[:, 1] + stem[:, 2])[:, None].repeat(1, 2, 1, 1) / 2)
    rgb = build_encoder("resnet18", 96, cifar_stem=False)
    load_initial_weights(rgb, str(tmp_path / "rgb.pth"))
    image = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.allclose(gray.eval()(image.expand(-1, 2, -1, -1)), rgb.eval()(image.expand(-1, 3, -1, -1)), atol=1e-5)


# ---- the views ----

def test_colour_ops_for_rgb_only() -> None:
    assert BatchAugment(AugmentSpec(image_size=8)).ops == ("crop", "flip", "colour jitter", "grayscale")
    bands = BatchAugment(AugmentSpec(image_size=8, channels=4))
    assert bands.ops == ("crop", "flip", "band intensity jitter")
    views = bands(torch.randint(0, 256, (3, 4, 12, 12), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert views.shape == (3, 4, 8, 8) and 0 <= views.min() and views.max() <= 1
    with pytest.raises(ValueError, match="4-channel"):
        bands(torch.zeros(3, 3, 12, 12))


def test_band_jitter_is_per_band() -> None:
    images = torch.rand(2, 3, 4, 5) * 0.5
    factors = torch.tensor([[0.5, 1.0, 1.5], [1.2, 0.8, 1.0]])
    brighter = adjust_band_brightness(images, factors)
    for i in range(2):
        for c in range(3):
            assert torch.allclose(brighter[i, c], (images[i, c] * factors[i, c]).clamp(0, 1))
            mean = images[i, c].mean()
            assert torch.allclose(adjust_band_contrast(images, factors)[i, c], (mean + factors[i, c] * (images[i, c] - mean)).clamp(0, 1))


# ---- the commands: 4-channel .npy and 1-channel PNG folders trained, embedded and exported ----

def _folders(root: Path) -> dict[int, Path]:
    rng = np.random.default_rng(2)
    bands, gray = root / "bands", root / "gray"
    bands.mkdir()
    gray.mkdir()
    for i in range(6):  # both layouts, 8- and 16-bit
        array = rng.integers(0, 65536, (4, 12, 12), dtype=np.uint16) if i % 2 else rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)
        np.save(bands / f"{i}.npy", array)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(gray / f"{i}.png")
    return {4: bands, 1: gray}


@pytest.mark.parametrize("channels, data_mode", [(4, "stream"), (1, "memory")])  # 4 in memory: the bad-input test
def test_a_folder_of_n_channels_trains_embeds_and_exports(channels: int, data_mode: str, tmp_path: Path) -> None:
    data = _folders(tmp_path)[channels]
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--in-channels", str(channels), "--out-dir", str(run),
                 "--data-mode", data_mode, "--workers", "0", *TINY]) == 0
    config = PretrainConfig(**yaml.safe_load((run / "config.yaml").read_text()))
    assert config.in_channels == channels
    assert "colour jitter" not in batch_augment(config).ops and "grayscale" not in batch_augment(config).ops
    encoder, transform, info = load_encoder(run / "encoder.safetensors")
    assert info["model"]["in_channels"] == channels and encoder.net.conv1.in_channels == channels
    assert main(["embed", "--checkpoint", str(run / "encoder.safetensors"), "--data", str(data), "--out",
                 str(tmp_path / "h.npy"), "--no-progress", "--workers", "0"]) == 0
    assert np.load(tmp_path / "h.npy").shape == (6, 512)
    query = sorted(data.iterdir())[1]  # a query file read with the run's channels; the sheet shows it as gray
    assert main(["neighbors", "--embeddings", str(tmp_path / "h.npy"), "--query", str(query), "--checkpoint",
                 str(run / "encoder.safetensors"), "-k", "2", "--grid", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").mode == "RGB"
    assert main(["export", "--checkpoint", str(run / "encoder.safetensors"), "--format", "torchvision", "--out",
                 str(tmp_path / "x.safetensors")]) == 0
    described = json.loads((tmp_path / "x.safetensors.json").read_text())
    assert described["input"]["shape"] == ["batch", channels, 8, 8] and described["in_channels"] == channels
    assert f"Conv2d({channels}, 64" in described["load"]


def test_bad_channel_input_is_one_line_or_a_counted_skip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _folders(tmp_path)[4]
    assert "--in-channels must be > 0, got 0" in _one_line_error(
        ["pretrain", "--data", str(data), "--in-channels", "0", *TINY], capsys)
    assert "needs --augment-mode batched" in _one_line_error(
        ["pretrain", "--data", str(data), "--in-channels", "4", "--augment-mode", "per-image", *TINY], capsys)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(4):
        Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(rgb / f"{i}.jpg")
    assert "every image file is bad: skipped 4 of 4 image files (4 not 4-channel)" in _one_line_error(
        ["pretrain", "--data", str(rgb), "--in-channels", "4", "--out-dir", str(tmp_path / "r1"), *TINY], capsys)
    no_size = [arg for arg in TINY if arg not in ("--image-size", "8")]  # the size from headers, none of them usable
    assert "every image file is bad: skipped 4 of 4 image files (4 not 1-channel)" in _one_line_error(
        ["pretrain", "--data", str(rgb), "--in-channels", "1", "--out-dir", str(tmp_path / "r0"), *no_size], capsys)
    with pytest.raises(UserError, match="cifar10's images are RGB"):
        open_images(f"cifar10:{tmp_path}", "train", policy=ReadPolicy(channels=4))
    np.save(data / "odd.npy", np.zeros((3, 12, 12), np.uint8))  # a 3-channel array among 4-channel ones
    assert main(["pretrain", "--data", str(data), "--in-channels", "4", "--out-dir", str(tmp_path / "r2"), *TINY]) == 0
    assert "skipped 1 of 7 image files (1 not 4-channel)" in capsys.readouterr().err
    assert "odd.npy,not 4-channel" in (tmp_path / "r2" / "skipped_files.csv").read_text()
