"""Label-free health metrics: each against an independent reference, the collapse alarm, and the training hook."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchclr.health.measures import (
    alignment,
    chance_top1,
    dimension_std,
    effective_rank,
    health_metrics,
    uniformity,
    view_retrieval_top1,
)
from torchclr.health.monitor import CollapseWatch, HealthMonitor


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x ** 2).sum(axis=1, keepdims=True))


def test_uniformity_matches_an_explicit_pairwise_loop() -> None:
    z = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    rows = _unit_rows(z.numpy().astype(np.float64))
    terms = [math.exp(-2.0 * float(((rows[i] - rows[j]) ** 2).sum())) for i, j in itertools.combinations(range(9), 2)]
    assert uniformity(z) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-12)


def test_alignment_matches_a_loop_over_pairs() -> None:
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(7, 4, generator=generator), torch.randn(7, 4, generator=generator)
    a, b = _unit_rows(z1.numpy().astype(np.float64)), _unit_rows(z2.numpy().astype(np.float64))
    expected = sum(float(np.linalg.norm(a[i] - b[i]) ** 2) for i in range(7)) / 7
    assert alignment(z1, z2) == pytest.approx(expected, rel=1e-12)
    assert alignment(z1, 3 * z1) == pytest.approx(0.0, abs=1e-12)  # the same direction: perfectly aligned


def test_rankme_of_a_matrix_with_known_singular_values() -> None:
    """h = U diag(s) V^T with s = (3, 2, 1): p = (1/2, 1/3, 1/6) + 1e-7 on 3 values, 1e-7 on the other 5 (of min(20, 8))."""
    generator = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(20, 8, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))
    s = torch.tensor([3.0, 2.0, 1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    h = u @ torch.diag(s) @ v.T
    p = [1 / 2 + 1e-7, 1 / 3 + 1e-7, 1 / 6 + 1e-7] + [1e-7] * 5
    by_hand = math.exp(-sum(q * math.log(q) for q in p))  # 2.7495..., between 2 and 3 singular directions
    assert effective_rank(h) == pytest.approx(by_hand, rel=1e-6)
    equal = u[:, :5] @ v[:5]  # five equal singular values: rank 5
    assert effective_rank(equal) == pytest.approx(5.0, rel=1e-4)


def test_collapsed_embeddings_score_rank_one_no_spread_and_chance_retrieval() -> None:
    constant = torch.ones(64, 32) * torch.linspace(-1, 1, 32)
    metrics = health_metrics(constant, constant, constant, constant)
    assert metrics["rank_h"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["std_h"] == pytest.approx(0.0, abs=1e-12) and metrics["std_z"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["view_top1"] == pytest.approx(chance_top1(64), rel=1e-12)  # every other view ties
    assert metrics["uniformity"] == pytest.approx(0.0, abs=1e-12) and metrics["alignment"] == pytest.approx(0.0, abs=1e-12)


def test_random_gaussian_embeddings_give_the_known_values() -> None:
    """Gaussian rows are uniform on the sphere: per-dimension std 1/sqrt(d); uniformity -4 + 8/d (cos ~ N(0, 1/d))."""
    generator = torch.Generator().manual_seed(3)
    d = 128
    a, b = torch.randn(2000, d, generator=generator), torch.randn(2000, d, generator=generator)
    assert dimension_std(a) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert uniformity(a) == pytest.approx(-4 + 8 / d, abs=0.01)
    assert alignment(a, b) == pytest.approx(2.0, abs=0.02)  # independent unit vectors: E||x - y||^2 = 2
    assert effective_rank(a) > 0.95 * d  # near-isotropic: close to full rank
    assert view_retrieval_top1(a[:200], b[:200]) < 3 * chance_top1(200)  # unrelated "views": near chance
    assert view_retrieval_top1(a[:200], a[:200] + 0.1 * b[:200]) == 100.0  # near copies: every partner found


def test_view_retrieval_matches_a_brute_force_search_with_ties() -> None:
    generator = torch.Generator().manual_seed(4)
    first, second = torch.randn(6, 3, generator=generator), torch.randn(6, 3, generator=generator)
    second[2] = first[2]  # a perfect pair
    second[4] = second[5] = first[4]  # rows 4, 10 and 11 are one point: row 4 finds its partner (10) in a tie of two
    rows = _unit_rows(torch.cat([first, second]).numpy().astype(np.float64))
    credit = 0.0
    for i in range(12):
        sims = [float(rows[i] @ rows[j]) if j != i else -math.inf for j in range(12)]
        top = max(sims)
        tied = [j for j in range(12) if sims[j] == top]
        credit += (1 / len(tied)) if (i + 6) % 12 in tied else 0.0
    assert view_retrieval_top1(first, second) == pytest.approx(100 * credit / 12, rel=1e-12)


def test_collapse_watch_warns_once_naming_the_metric_and_the_epoch() -> None:
    watch = CollapseWatch(chance=chance_top1(512))
    healthy = {"rank_h": 40.0, "std_h": 0.02, "std_z": 0.08, "view_top1": 30.0}
    assert watch.observe(1, healthy) is None
    assert watch.observe(2, {**healthy, "rank_h": 20.0}) is None  # half the start is not a collapse
    line = watch.observe(3, {**healthy, "rank_h": 3.0})
    assert line is not None and "epoch 3" in line and "rank_h" in line and "\n" not in line
    assert watch.observe(4, {**healthy, "rank_h": 1.0}) is None  # said once


# Measured runs (docs/health.md): rank_h, std_h, std_z, view_top1 after each epoch of the quickstart settings at
# 32 px on the shipped sample, healthy (temperature 0.1) and made to collapse (--temperature 100).
HEALTHY_RUN = [(163.2, 0.0170, 0.0457, 10.06), (134.0, 0.0210, 0.0541, 15.23), (134.7, 0.0254, 0.0648, 20.80),
               (147.2, 0.0295, 0.0815, 20.51), (150.7, 0.0298, 0.0842, 24.22), (154.7, 0.0298, 0.0849, 24.32),
               (154.7, 0.0303, 0.0861, 26.76), (158.8, 0.0302, 0.0865, 28.22), (162.2, 0.0302, 0.0869, 28.12),
               (163.1, 0.0304, 0.0871, 28.42)]
TEMPERATURE_100_RUN = [(138.55, 0.0211, 0.0584, 5.469), (73.80, 0.0314, 0.0856, 4.102), (48.30, 0.0301, 0.0828, 3.223),
                       (31.85, 0.0307, 0.0852, 2.539), (23.02, 0.0301, 0.0823, 2.148), (26.50, 0.0317, 0.0873, 1.953),
                       (24.82, 0.0322, 0.0882, 1.465)]


def _replay(run: list[tuple[float, float, float, float]]) -> list[str]:
    watch = CollapseWatch(chance=chance_top1(512))
    said = [watch.observe(epoch, dict(zip(("rank_h", "std_h", "std_z", "view_top1"), values)))
            for epoch, values in enumerate(run, start=1)]
    return [line for line in said if line]


def test_the_measured_runs_a_healthy_one_never_warns_one_made_to_collapse_warns_at_epoch_4() -> None:
    assert _replay(HEALTHY_RUN) == []
    assert _replay(TEMPERATURE_100_RUN) == ["warning: the representation collapsed by epoch 4: rank_h 31.9 is 23.0% of "
                                            "its best 139"]


def test_retrieval_at_chance_is_a_collapse_only_after_it_was_clearly_above_chance() -> None:
    chance = chance_top1(512)
    healthy = {"rank_h": 40.0, "std_h": 0.02, "std_z": 0.08}
    watch = CollapseWatch(chance=chance)
    assert watch.observe(1, {**healthy, "view_top1": chance}) is None  # untrained: at chance is where it starts
    assert watch.observe(2, {**healthy, "view_top1": 3 * chance}) is None  # above the alarm, not yet clearly above
    assert watch.observe(3, {**healthy, "view_top1": 1.5 * chance}) is None  # so this is no fall back to chance
    assert watch.observe(4, {**healthy, "view_top1": 10 * chance}) is None  # now it has learnt something
    line = watch.observe(5, {**healthy, "view_top1": 2 * chance})  # ... and lost it
    assert line is not None and "view_top1" in line and "epoch 5" in line and "at chance" in line


class _Pixels(nn.Module):
    """h = pixels pooled to 4x4 (48 values), z = a fixed linear map of h: a network that tells images apart."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.project = nn.Linear(48, 16)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pool(images).flatten(1)
        return h, self.project(h)


def test_monitor_slice_is_fixed_by_its_seed_and_tells_a_working_network_from_a_collapsed_one(tiny_folder: Path) -> None:
    from torchclr.data.sources import open_images
    from torchclr.transforms import AugmentSpec

    images = open_images(str(tiny_folder), "train")
    spec = AugmentSpec(image_size=24)
    monitor = HealthMonitor.from_images(images, spec, count=40, seed=5)
    again = HealthMonitor.from_images(images, spec, count=40, seed=5)
    other = HealthMonitor.from_images(images, spec, count=40, seed=6)
    assert len(monitor) == 40 and monitor.first.shape == (40, 3, 24, 24) and monitor.first.dtype == torch.uint8
    assert torch.equal(monitor.first, again.first) and torch.equal(monitor.second, again.second)
    assert not torch.equal(monitor.first, other.first) and not torch.equal(monitor.first, monitor.second)
    assert len(HealthMonitor.from_images(images, spec, count=1000)) == len(images)  # a small set is used whole

    working = monitor.measure(_Pixels(), torch.device("cpu"))
    assert working["view_top1"] > 5 * monitor.chance and working["rank_h"] > 3

    class Collapsed(_Pixels):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h, z = super().forward(images)
            return h * 0 + 1, z * 0 + 1

    collapsed = monitor.measure(Collapsed(), torch.device("cpu"))
    assert collapsed["view_top1"] == pytest.approx(monitor.chance) and collapsed["rank_h"] == pytest.approx(1.0, abs=1e-3)
    watch = CollapseWatch(monitor.chance)
    assert watch.observe(1, collapsed) is None  # constant from the start: nothing to fall from
    assert watch.observe(2, working) is None and watch.observe(3, collapsed) is not None


class _CollapsesWhenTold(nn.Module):
    """h = a linear map of the pixels pooled to 4x4 until `collapsed` is set, then a constant."""

    feature_dim = 32  # so that wrapping it needs no dry forward pass

    def __init__(self) -> None:
        super().__init__()
        self.pool, self.linear, self.collapsed = nn.AdaptiveAvgPool2d(4), nn.Linear(48, 32), False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.linear(self.pool(images).flatten(1))
        return h * 0 + self.linear.bias if self.collapsed else h


@pytest.mark.slow
def test_stop_on_collapse_ends_the_run_and_keeps_the_last_healthy_weights(tmp_path: Path, tiny_folder: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder turns constant right after the first health measurement (end of epoch 1)."""
    from safetensors.torch import load_file

    from torchclr import PretrainConfig, pretrain

    encoder, measure = _CollapsesWhenTold(), HealthMonitor.measure

    def measure_then_collapse(self: HealthMonitor, *args: object, **kwargs: object) -> dict[str, float]:
        metrics = measure(self, *args, **kwargs)
        encoder.collapsed = True
        return metrics

    monkeypatch.setattr(HealthMonitor, "measure", measure_then_collapse)

    run = tmp_path / "run"
    config = PretrainConfig(data=str(tiny_folder), out_dir=str(run), epochs=4, batch_size=32, warmup_epochs=0, lr=0.3,
                            knn_every=0, final_report=False, progress=False, image_size=32, keep_checkpoints=0,
                            stop_on_collapse=True, keep_best="view_top1", precision="fp32")
    pretrain(config, encoder=encoder)
    out = capsys.readouterr().out
    assert "collapsed by epoch 2" in out and "view_top1" in out and "--stop-on-collapse: stopped at epoch 2" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if "rank_h" in r]
    assert [r["epoch"] for r in measured] == [1, 2] and measured[1]["view_top1"] < measured[0]["view_top1"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.safetensors"]  # nothing after the collapse
    healthy = load_file(run / "checkpoints" / "epoch-0001.safetensors")
    exported = load_file(run / "encoder.safetensors")
    assert torch.equal(exported["encoder.net.linear.weight"], healthy["model.encoder.net.linear.weight"])
    assert (run / "best.safetensors").read_bytes() == (run / "checkpoints" / "epoch-0001.safetensors").read_bytes()


def test_unknown_keep_best_metric_is_one_line_listing_the_known_ones(capsys: pytest.CaptureFixture) -> None:
    from torchclr.cli import main

    assert main(["pretrain", "--keep-best", "loss", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--keep-best" in err and "view_top1" in err and "knn_top1" in err
