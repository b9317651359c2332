"""The streaming data path, tar shards, evaluation at scale and the data-derived defaults, on tiny data."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from conftest import png_bytes
from torchclr import checkpoint
from torchclr.cli import main
from torchclr.config import PretrainConfig
from torchclr.data.cache import materialize, pad_to
from torchclr.data import plan
from torchclr.data.reader import decode_image
from torchclr.data.sources import open_images
from torchclr.data.streaming import StreamedViews
from torchclr.errors import UserError
from torchclr.evaluate import logreg
from torchclr.evaluate.monitor import EvalSplit, bank_indices
from torchclr.models import build_encoder
from torchclr.data.pipeline import build_view_batches
from torchclr.transforms import AugmentSpec
from torchclr.transforms.batched import replicate_last_valid_row_and_column, sample_crop_boxes

TINY = ["--batch-size", "16", "--lr", "0.3", "--warmup-epochs", "0.5", "--knn-k", "5", "--no-progress", "--seed", "3",
        "--no-cifar-stem", "--data-mode", "stream", "--workers", "1"]


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def imagenet_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet's layout in small: 25 synset folders x 4 JPEGs of varied sizes and aspect ratios in train/, one in val/."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 1)):
        for label in range(25):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = (int(v) for v in rng.integers(24, 90, size=2))
                (folder / f"{i}.JPEG").write_bytes(_jpeg(width, height, 1000 * label + i))
    return root


@pytest.mark.slow
def test_imagenet_preset_streams_through_the_monitor_and_the_probe(tmp_path: Path, imagenet_shaped: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from torchclr.evaluate import monitor  # torchclr.evaluate itself is the function

    monkeypatch.setattr(monitor, "fits_in_memory", lambda nbytes: False)  # the labelled splits too
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "imagenet", "--data", str(imagenet_shaped), "--batch-size", "8", "--epochs", "1",
                 "--data-mode", "stream", "--arch", "resnet18", "--image-size", "16", "--stored-size", "32", "--eval-split",
                 "val", "--warmup-epochs", "0", "--workers", "1", "--knn-k", "5", "--no-progress", "--out-dir", str(out)]) == 0
    said = capsys.readouterr().out
    assert "data: 100 images" in said and "streamed: --data-mode stream" in said and "--final-protocol logreg" in said
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "knn_top1" in r] == [1]  # the monitor's default for streamed data still ends the run
    report = json.loads((out / "linear_eval.json").read_text())
    assert set(report) == {"SimCLR (this run)", "random weights"} and all(0 <= r["top1"] <= 100 for r in report.values())


@pytest.mark.slow
def test_streaming_resume_continues_exactly(tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after epoch 1 and resumed, a streaming run writes the same epoch-2 checkpoint as an uninterrupted one."""

    def run(name: str, *extra: str) -> int:
        # train/ alone: no labelled splits, so no monitor or probe (test_cli covers those), only training and resume
        return main(["pretrain", "--data", str(tiny_folder / "train"), "--out-dir", str(tmp_path / name), "--epochs", "2",
                     "--deterministic", *TINY, *extra])

    assert run("whole") == 0
    real_save = checkpoint.save_training

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_training", save_then_stop)
    assert run("split") == 130
    monkeypatch.setattr(checkpoint, "save_training", real_save)
    assert run("split", "--resume") == 0
    expected, _ = checkpoint.load(tmp_path / "whole" / "checkpoints" / "epoch-0002.safetensors")
    resumed, _ = checkpoint.load(tmp_path / "split" / "checkpoints" / "epoch-0002.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_tar_shards_read_in_place_with_labels(tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = open_images(str(tiny_folder), "train")
    shards = tmp_path / "shards" / "train"
    shards.mkdir(parents=True)
    for number in range(2):  # images interleaved over two shards, webdataset keys, labels as .cls text
        members = []
        for index in range(number, len(folder), 2):
            key = f"{index:06d}"
            members += [(f"{key}.png", (tiny_folder / "train" / folder.names[index]).read_bytes()),
                        (f"{key}.cls", str(folder.labels[index]).encode())]
        _write_shard(shards / f"shard-{number:04d}.tar", members)
    images = open_images(str(tmp_path / "shards"), "train")
    assert len(images) == len(folder) and images.labelled and images.classes == ["0", "1"]
    for position, name in enumerate(images.names):
        index = int(name.split("/")[1][:6])
        assert images.labels[position] == folder.labels[index]
        assert torch.equal(images.image(position), folder.image(index))
    order = [int(name.split("/")[1][:6]) for name in images.names]  # decoded by a thread pool, sharing the shards
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # many threads at once, as on a large machine
    assert torch.equal(materialize(images, 32).tensor, materialize(folder, 32).tensor[order])


def test_a_shard_written_out_of_order_is_indexed_sorted_with_its_labels(tmp_path: Path) -> None:
    members = []
    for i in reversed(range(6)):  # keys descending, each label after its image
        members += [(f"{i:03d}.jpg", _jpeg(40, 30, i)), (f"{i:03d}.cls", str(i % 3).encode())]
    images = open_images(str(_write_shard(tmp_path / "backwards.tar", members)), "train")
    assert list(images.names) == [f"backwards/{i:03d}.jpg" for i in range(6)]
    assert images.labels == [i % 3 for i in range(6)]
    for i in range(6):
        assert torch.equal(images.image(i), decode_image(_jpeg(40, 30, i), "reference"))


def test_a_cut_shard_keeps_its_complete_images_or_names_itself(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    members = [(f"{i:03d}.jpg", _jpeg(40, 30, i)) for i in range(6)]
    whole = _write_shard(tmp_path / "whole.tar", members).read_bytes()
    offsets = [whole.index(data) for _, data in members]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: offsets[3] + 100])  # in the middle of the fourth image
    images = open_images(str(cut), "train")
    assert len(images) == 3 and torch.equal(images.image(2), open_images(str(tmp_path / "whole.tar"), "train").image(2))
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and str(cut) in warning[0] and "first 3 complete images" in warning[0]

    cut.write_bytes(whole[:300])  # inside the first header: nothing to keep
    with pytest.raises(UserError, match="cut.tar"):
        open_images(str(cut), "train")


def _zero_height_jpeg() -> bytes:
    data = bytearray(_jpeg(40, 30, 0))
    frame = data.index(b"\xff\xc0")  # start of frame: length (2), precision (1), then height (2)
    data[frame + 5 : frame + 7] = b"\x00\x00"
    return bytes(data)


def test_an_image_of_zero_pixels_is_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.jpg").write_bytes(_jpeg(50, 40, i))
    (folder / "3.jpg").write_bytes(_zero_height_jpeg())
    views = StreamedViews(open_images(str(folder), "train"), AugmentSpec(image_size=16), batch_size=4, device=torch.device("cpu"),
                          seed=0, stored_side=32, workers=0)
    pairs = list(views.epoch(0))
    assert len(pairs) == 2 and all(first.shape == (4, 3, 16, 16) for first, _ in pairs)
    assert views.skipped == 1
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "skipped 1 images" in warning[0] and "3.jpg" in warning[0]


def test_streamed_batches_hold_each_image_whole_with_its_size(tmp_path: Path) -> None:
    """Workers decode a large JPEG in draft mode and fit it within the stored side, keeping its aspect ratio."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "wide.jpg").write_bytes(_jpeg(400, 300, 1))
    (folder / "tall.jpg").write_bytes(_jpeg(60, 120, 2))
    views = StreamedViews(open_images(str(folder), "train"), AugmentSpec(image_size=16), batch_size=2, device=torch.device("cpu"),
                          seed=0, stored_side=64, workers=0)
    images, sizes, failures = next(iter(views.loader))
    by_shape = sorted(tuple(size) for size in sizes.tolist())
    assert failures == [] and images.shape == (2, 3, 64, 64) and by_shape == [(48, 64), (64, 32)]
    for image, (height, width) in zip(images, sizes.tolist()):  # zero padding (BatchAugment handles the edges)
        assert image[:, height:].eq(0).all() and image[:, :, width:].eq(0).all() and image[:, :height, :width].gt(0).any()


def test_crop_boxes_stay_inside_each_image_and_reach_its_edges() -> None:
    sizes = torch.tensor([[40, 10], [12, 40], [20, 20]]).repeat(1000, 1)
    boxes = sample_crop_boxes(len(sizes), sizes[:, 0], sizes[:, 1], (0.08, 1.0), (3 / 4, 4 / 3), "cpu", torch.Generator().manual_seed(0))
    left, top, right, bottom = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (right <= sizes[:, 1]).all() and (bottom <= sizes[:, 0]).all()
    assert (left == 0).any() and (right == sizes[:, 1]).any() and (bottom == sizes[:, 0]).any()


def test_a_padded_batch_crops_as_each_image_alone() -> None:
    """roi_align reads up to half a pixel past a box: at a valid region's edge the padding must act as the border
    (BatchAugment copies each image's last valid row and column over the first padding ones before cropping)."""
    generator = torch.Generator().manual_seed(0)
    alone = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
             for height, width in ((40, 10), (12, 40), (20, 20))]
    sizes = torch.tensor([image.shape[-2:] for image in alone])
    batch = replicate_last_valid_row_and_column(torch.stack([pad_to(image, 40) for image in alone]).float(), sizes)
    boxes = sample_crop_boxes(300, sizes[:, 0].repeat(100), sizes[:, 1].repeat(100), (0.08, 1.0), (3 / 4, 4 / 3), "cpu", generator)
    source = torch.arange(300).remainder(3)
    padded = roi_align(batch, torch.cat((source[:, None].float(), boxes), 1), 8, 1.0, -1, True)
    for index in range(300):
        image = alone[int(source[index])][None].float()
        expected = roi_align(image, torch.cat((torch.zeros(1, 1), boxes[index : index + 1]), 1), 8, 1.0, -1, True)
        assert torch.allclose(padded[index], expected[0]), index


def test_auto_streams_a_set_too_big_for_the_memory_share(tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = open_images(str(tiny_folder), "train")
    sizes = plan.sample_sizes(images)
    config = PretrainConfig(data=str(tiny_folder), image_size=16, batch_size=16, workers=0)
    assert type(build_view_batches(config, images, sizes, torch.device("cpu"), rank=0, world=1)).__name__ == "BatchedViews"
    needed = len(images) * 3 * 32 * 32  # 32 px images, stored whole
    monkeypatch.setattr(plan, "available_memory", lambda: 4 * needed - 4)  # the 25% share falls one byte short
    choice = plan.choose_mode("auto", len(images), 120, sizes)
    assert choice.mode == "stream" and "more than 25%" in choice.reason
    assert isinstance(build_view_batches(config, images, sizes, torch.device("cpu"), rank=0, world=1), StreamedViews)
    monkeypatch.setattr(plan, "available_memory", lambda: 4 * needed)
    assert plan.choose_mode("auto", len(images), 120, sizes).mode == "memory"


def test_view_size_defaults_from_the_images() -> None:
    assert [plan.default_image_size([(s, s)]) for s in (32, 64, 65, 96, 160, 161, 500)] == [32, 32, 96, 96, 96, 224, 224]
    assert plan.default_image_size([(375, 500), (32, 32), (400, 300)]) == 224  # the median decides


@pytest.mark.slow
def test_sgd_probe_agrees_with_lbfgs_on_a_separable_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 3

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 4, (count,), generator=generator)
        return centres[labels] + torch.randn(count, 16, generator=generator), labels

    (train_x, train_y), (test_x, test_y) = sample(2000), sample(500)
    full_batch = logreg.linear_probe(train_x, train_y, test_x, test_y, 4)
    monkeypatch.setattr(logreg, "FULL_BATCH_MAX_VALUES", 0)
    minibatch = logreg.linear_probe(train_x, train_y, test_x, test_y, 4)
    assert full_batch.top1 > 97 and abs(minibatch.top1 - full_batch.top1) <= 1.0


def test_streamed_eval_features_equal_held_ones(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchclr.evaluate import monitor  # torchclr.evaluate itself is the function

    images = open_images(str(tiny_folder), "test")
    held = EvalSplit.open(images, 24)
    monkeypatch.setattr(monitor, "fits_in_memory", lambda nbytes: False)
    streamed = EvalSplit.open(images, 24)
    assert held.held is not None and streamed.held is None
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 24, False)
    subset = torch.tensor([5, 0, 11])
    expected, labels = held.features(encoder, torch.device("cpu"), subset)
    streamed_features, streamed_labels = streamed.features(encoder, torch.device("cpu"), subset)
    assert torch.equal(streamed_features, expected) and torch.equal(streamed_labels, labels)


def test_knn_bank_is_a_bounded_seeded_subset() -> None:
    bank = bank_indices(1000, 100, seed=1)
    assert len(bank) == 100 and len(set(bank.tolist())) == 100 and bank.max() < 1000
    assert torch.equal(bank, bank_indices(1000, 100, seed=1)) and not torch.equal(bank, bank_indices(1000, 100, seed=2))
    assert torch.equal(bank_indices(50, 100, seed=1), torch.arange(50))


def test_png_shard_member_reads_like_the_file(tmp_path: Path) -> None:
    picture = Image.new("RGB", (7, 5), (10, 20, 30))
    _write_shard(tmp_path / "one.tar", [("a.png", png_bytes(picture))])
    images = open_images(str(tmp_path / "one.tar"), "train")
    assert not images.labelled and images.image(0).shape == (3, 5, 7) and images.image(0)[:, 0, 0].tolist() == [10, 20, 30]


def test_a_file_that_fails_to_decode_in_a_streamed_split_leaves_with_its_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """Class a red, class b blue, a cut file first in a: every view and every h must keep its own class's label,
    whichever use reads the split first (features of a bank, all views for fine-tuning)."""
    from torch import nn

    from torchclr.evaluate import monitor  # torchclr.evaluate itself is the function

    for label, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (tmp_path / "test" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "test" / label / f"{i}.png").write_bytes(png_bytes(Image.new("RGB", (8, 8), colour)))
    (tmp_path / "test" / "a" / "0cut.png").write_bytes(png_bytes(Image.new("RGB", (40, 40), (255, 0, 0)))[:60])
    monkeypatch.setattr(monitor, "fits_in_memory", lambda nbytes: False)
    mean_colour = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for first in ("features", "views"):
        split = EvalSplit.open(open_images(str(tmp_path), "test"), 8, "test")
        assert split.held is None and len(split) == 7
        if first == "features":
            features, labels = split.features(mean_colour, torch.device("cpu"), torch.tensor([0, 1, 3, 5]))
            assert len(features) == 3 and torch.equal((features[:, 0] > 0.5).long(), 1 - labels)  # red: class 0 (a)
        views, labels = split.views()
        assert len(views) == len(labels) == 6 and torch.equal((views[:, 0, 4, 4] > 128).long(), 1 - labels)
        features, labels = split.features(mean_colour, torch.device("cpu"))
        assert len(features) == 6 and torch.equal((features[:, 0] > 0.5).long(), 1 - labels)
        err = capsys.readouterr().err
        assert err.count("skipped 1 of 7 image files (1 truncated or corrupt); evaluating on the other 6") == 1, err
