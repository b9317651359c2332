"""Multi-crop views (--views): parsing and its one-line refusals, one augmentation pass per size with the whole-image
crop law on the in-memory and streaming paths, one encoder pass per size in the training step, the memory plan
and the report's preview."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from torchclr import memory
from torchclr.cli import main
from torchclr.config import PretrainConfig
from torchclr.data.cache import pad_to
from torchclr.data.loaders import BatchedViews
from torchclr.data.pipeline import build_view_batches
from torchclr.data.plan import sample_sizes
from torchclr.data.sources import open_images
from torchclr.data.streaming import StreamedViews
from torchclr.errors import UserError
from torchclr.evaluate.features import extract_features
from torchclr.loss import build_loss
from torchclr.report.build import first_batch_views
from torchclr.step import StepContext, training_step
from torchclr.transforms import AugmentSpec, BatchAugment
from torchclr.transforms.batched import MultiCropAugment
from torchclr.transforms.multicrop import LARGE_SCALE, SMALL_SCALE, MultiCrop, ViewGroup


def test_parse_orders_large_views_first_with_swav_scales() -> None:
    views = MultiCrop.parse("6x24, 2x48", (0.08, 1.0))
    assert views.groups == (ViewGroup(2, 48, LARGE_SCALE), ViewGroup(6, 24, SMALL_SCALE))
    assert (views.views, views.large_size, views.large_views, views.pixels) == (8, 48, 2, 2 * 48**2 + 6 * 24**2)


def test_parse_keeps_crop_scale_without_small_views_and_takes_per_group_scales() -> None:
    assert MultiCrop.parse("4x32", (0.2, 1.0)).groups == (ViewGroup(4, 32, (0.2, 1.0)),)
    views = MultiCrop.parse("2x48@0.3-1,4x24@.05-0.2", (0.08, 1.0))
    assert views.groups == (ViewGroup(2, 48, (0.3, 1.0)), ViewGroup(4, 24, (0.05, 0.2)))


def test_two_views_at_the_image_size_are_the_plain_pair() -> None:
    assert PretrainConfig(views="2x32", image_size=32).multi_crop() is None
    assert PretrainConfig(views="2x32").multi_crop() is None
    assert PretrainConfig(views="3x32", image_size=32).multi_crop().views == 3


@pytest.mark.parametrize(("options", "message"), [
    (["--views", "0x32"], "--views 0x32: every group needs at least 1 view"),
    (["--views", "2x0"], "--views 2x0: views must be at least 8 px"),
    (["--views", "1x32"], "--views 1x32 gives 1 view per image: a contrastive loss needs at least 2"),
    (["--views", "2x32,three"], "--views must be groups COUNTxSIZE"),
    (["--views", "2x32,4x16@0.5-0.1"], "--views 2x32,4x16@0.5-0.1: a crop scale LOW-HIGH must satisfy"),
    (["--views", "2x64,4x32", "--stored-size", "48"], "--views 2x64,4x32: 64 px views are larger than --stored-size 48"),
    (["--views", "2x32,4x16", "--augment-mode", "per-image"], "--views 2x32,4x16 needs --augment-mode batched"),
    (["--views", "2x32,4x16", "--image-size", "48"], "its largest views are 32 px but --image-size is 48"),
    (["--views", "2x32,4x16", "--resolution-schedule", "16@0,32@0.5"], "cannot be combined with --resolution-schedule"),
    (["--views", "2x32,4x16", "--loss", "margin_triplet", "--semi-hard"], "gives 6 views per image; --semi-hard"),
    (["--views", "2x32,4x16", "--grad-cache-chunk", "8"], "--grad-cache-chunk 8: gradient caching runs two views"),
    (["--views", "2x32,4x16", "--loss", "nt_logistic", "--view-anchors", "large"], "--view-anchors large applies to --loss nt_xent"),
    (["--view-anchors", "large"], "--view-anchors large needs --views"),
])
def test_bad_views_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str], message: str) -> None:
    assert main(["pretrain", "--out-dir", str(tmp_path / "run"), *options]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def white_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three white images of different shapes, zero-padded (black) to 40 px, with their valid sizes."""
    shapes = ((40, 12), (16, 40), (24, 24))
    batch = torch.stack([pad_to(torch.full((3, h, w), 255, dtype=torch.uint8), 40) for h, w in shapes])
    return batch, torch.tensor(shapes)


def test_each_group_is_one_pass_of_its_own_size_and_scale() -> None:
    spec = AugmentSpec(image_size=32)
    views = MultiCrop.parse("2x32,3x16", spec.crop_scale)
    batch, sizes = white_padded_batch()
    drawn = MultiCropAugment(spec, views).draw(batch, torch.Generator().manual_seed(4), sizes)
    # the same draws, group after group, from BatchAugments of the group's size and scale
    generator = torch.Generator().manual_seed(4)
    expected = [BatchAugment(dataclasses.replace(spec, image_size=size, crop_scale=scale)).many_views(batch, count, generator, sizes)
                for count, size, scale in ((2, 32, LARGE_SCALE), (3, 16, SMALL_SCALE))]
    assert [tuple(t.shape) for t in drawn] == [(6, 3, 32, 32), (9, 3, 16, 16)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))


def test_small_views_are_drawn_inside_each_whole_image() -> None:
    """Colour-free views of white images: any black pixel would be padding reached by a crop."""
    spec = AugmentSpec(image_size=32, jitter_p=0.0, grayscale_p=0.0)
    batch, sizes = white_padded_batch()
    batch, sizes = batch.repeat(50, 1, 1, 1), sizes.repeat(50, 1)
    for group in MultiCropAugment(spec, MultiCrop.parse("2x32,4x16", spec.crop_scale)).draw(batch, torch.Generator().manual_seed(0), sizes):
        assert torch.allclose(group, torch.ones_like(group), atol=1e-5)


def test_small_crops_cover_less_of_the_image() -> None:
    """A small view (crop area 5-14%) of a left-to-right ramp spans a narrower range of values than a large one."""
    spec = AugmentSpec(image_size=32, jitter_p=0.0, grayscale_p=0.0, flip_p=0.0)
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(3, 64, 64).repeat(64, 1, 1, 1)
    large, small = MultiCropAugment(spec, MultiCrop.parse("1x32,1x16", spec.crop_scale)).draw(ramp, torch.Generator().manual_seed(0))
    spread = [(view.amax(dim=(1, 2, 3)) - view.amin(dim=(1, 2, 3))).mean().item() for view in (large, small)]
    assert spread[1] < 0.5 * spread[0]


def test_in_memory_and_streamed_views_are_the_same(tiny_folder: Path) -> None:
    images = open_images(str(tiny_folder), "train")
    spec, views = AugmentSpec(image_size=32), MultiCrop.parse("2x32,4x16", (0.08, 1.0))
    held = BatchedViews(images, spec, batch_size=16, device=torch.device("cpu"), seed=3, stored_size=32,
                        augment=MultiCropAugment(spec, views))
    streamed = StreamedViews(images, spec, batch_size=16, device=torch.device("cpu"), seed=3, stored_side=32, workers=0,
                             augment=MultiCropAugment(spec, views))
    for from_memory, from_stream in zip(held.epoch(0), streamed.epoch(0)):
        assert [tuple(t.shape) for t in from_memory] == [(32, 3, 32, 32), (64, 3, 16, 16)]
        assert all(torch.equal(a, b) for a, b in zip(from_memory, from_stream))


class CountingEncoder(nn.Module):
    """Global-pooled linear features with BatchNorm; counts its forward passes and the sizes they saw."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.norm, self.calls = nn.Linear(3, 8), nn.BatchNorm1d(8), []
        self.encoder = nn.Identity()  # what the memory plan's evaluation probe reads (stubbed out below)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(tuple(images.shape))
        h = self.norm(self.linear(images.mean(dim=(2, 3))))
        return h, h


def step_context(model: nn.Module, views: int) -> StepContext:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return StepContext(model=model, loss_fn=build_loss("nt_xent", 0.5, 0.0, views=views), optimizer=optimizer,
                       scaler=torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), dtype=None,
                       channels_last=False)


def test_the_step_runs_the_encoder_once_per_size() -> None:
    generator = torch.Generator().manual_seed(0)
    large, small = torch.rand(2 * 4, 3, 32, 32, generator=generator), torch.rand(3 * 4, 3, 16, 16, generator=generator)
    model = CountingEncoder()
    loss = training_step(step_context(model, 5), large, small)
    assert model.calls == [(8, 3, 32, 32), (12, 3, 16, 16)]
    # BN statistics per size group, z concatenated view-major: the loss of the groups embedded one by one
    reference = CountingEncoder()
    reference.load_state_dict(model.state_dict())
    z = torch.cat([reference(large)[1], reference(small)[1]])
    assert loss.item() == pytest.approx(build_loss("nt_xent", 0.5, 0.0, views=5)(z).item(), rel=1e-6)
    pair = CountingEncoder()
    training_step(step_context(pair, 2), large[:4], large[4:])
    assert pair.calls == [(8, 3, 32, 32)]  # two views of one size: one pass, BN over both, as before


def test_memory_plan_counts_every_view_and_refuses_caching_them(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = step_context(CountingEncoder(), 6)
    views = MultiCrop.parse("2x16,4x8", (0.08, 1.0))
    pair = memory.measure_whole_batch(step_context(CountingEncoder(), 2), 64, 16, 8)
    more = memory.measure_whole_batch(ctx, 64, 16, 8, views)
    assert more - pair >= 64 * 3 * 4 * (views.pixels - 2 * 16**2)  # the small views' bytes at least
    mib = 2**20
    monkeypatch.setattr(memory, "measure_network", lambda *_: memory.LinearCost(100 * mib, 10.0 * mib))
    monkeypatch.setattr(memory, "measure_whole_batch", lambda *_: 0)
    monkeypatch.setattr(memory, "free_memory", lambda device: int(170 * mib / memory.HEADROOM) + 1)
    monkeypatch.setattr(memory, "MIN_CHUNK", 2)
    monkeypatch.setattr(memory, "embedding_dim", lambda model: 8)
    monkeypatch.setattr(memory, "measure_inference", lambda *_: memory.LinearCost(0, 1.0))
    monkeypatch.setattr(memory.PeakMeter, "available", staticmethod(lambda device: True))
    assert memory.plan_pretraining(ctx, training_step, ctx.model, 16, 16, "auto", infer=extract_features).chunk is not None  # two views: chunks
    with pytest.raises(UserError, match=r"^batch 16 per process with --views \(6 views per image\) needs .* lower --batch-size"):
        memory.plan_pretraining(ctx, training_step, ctx.model, 16, 16, "auto", views=views, infer=extract_features)


def test_preview_shows_every_view_of_the_first_training_step(tiny_folder: Path) -> None:
    config = PretrainConfig(data=str(tiny_folder), batch_size=16, seed=5, image_size=32, views="2x32,4x16", stored_size=32)
    originals, views = first_batch_views(config, pairs=8)
    images = open_images(config.data, "train")
    training = build_view_batches(config, images, sample_sizes(images), torch.device("cpu"), rank=0, world=1)
    large, small = next(training.epoch(0))
    assert [view.shape[-1] for view in views] == [32, 32, 16, 16, 16, 16]
    expected = [*large.split(16), *small.split(16)]
    assert all(torch.equal(view, whole[:8]) for view, whole in zip(views, expected))
    assert originals.shape == (8, 3, 32, 32)


@pytest.mark.slow
def test_a_multi_crop_run_trains_and_logs_views_per_second(tmp_path: Path, tiny_folder: Path) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--out-dir", str(out), "--views", "2x16,2x8", "--epochs", "1",
                 "--batch-size", "16", "--warmup-epochs", "0.5", "--knn-every", "0", "--no-final-report", "--no-progress",
                 "--no-cifar-stem", "--arch", "resnet18", "--precision", "fp32"]) == 0
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "views_per_s" in r]
    assert logged and all(r["views_per_s"] == pytest.approx(4 * r["images_per_s"]) for r in logged)
    assert (out / "encoder.safetensors").is_file()


def test_small_views_that_leave_layer_4_a_1x1_map_train_in_fp32_on_the_cpu() -> None:
    """PyTorch's bf16 conv weight gradient on a 1x1 map is wrong on the CPU (see tests/test_models.py): the smallest
    view decides, not --image-size."""
    from torchclr.runtime import training_dtype

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    assert training_dtype(bf16, cpu, PretrainConfig(image_size=48, cifar_stem=False, views="2x48,4x16")) is None
    assert training_dtype(bf16, cpu, PretrainConfig(image_size=48, cifar_stem=False, views="2x48,4x24")) is bf16
