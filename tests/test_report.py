"""torchclr report: the page and its images, the first step's views as training made them, unlabelled runs, Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from carry_fixtures import TINY_RUN, trained_run  # noqa: F401 (a fixture)

from torchclr.cli import main
from torchclr.config import PretrainConfig
from torchclr.data.pipeline import build_view_batches
from torchclr.data.plan import sample_sizes
from torchclr.data.sources import open_images
from torchclr.report import build_report
from torchclr.report.build import first_batch_views


def _images_of(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


@pytest.mark.slow
def test_report_of_a_labelled_run(trained_run: Path) -> None:  # noqa: F811
    page = build_report(trained_run, device="cpu")
    shown = _images_of(page)
    assert shown == ["curves.png", "health.png", "views.png", "per_class.png", "map.png", "neighbours.png"]
    assert all((page.parent / name).stat().st_size > 1000 for name in shown)
    # the per-class table's overall figure is the kNN monitor's last top-1 (same encoder, k, T, data)
    last_knn = [json.loads(line)["knn_top1"] for line in (trained_run / "metrics.jsonl").read_text().splitlines() if "knn_top1" in line][-1]
    overall = float(re.search(r"<td>all</td><td>([0-9.]+)</td>", page.read_text()).group(1))
    assert overall == pytest.approx(last_knn, abs=0.01)
    assert "PCA" in page.read_text()


@pytest.mark.parametrize("schedule", [None, "16@0,32@0.5"])
def test_preview_views_are_those_of_the_first_training_step(tiny_folder: Path, schedule: str | None) -> None:
    """The views training drew at its first step, from the same pipeline: at the first resolution stage's size."""
    config = PretrainConfig(data=str(tiny_folder), batch_size=16, seed=5, image_size=32, resolution_schedule=schedule)
    originals, (one, two) = first_batch_views(config, pairs=8)
    images = open_images(config.data, "train")
    training = build_view_batches(config, images, sample_sizes(images), torch.device("cpu"), rank=0, world=1)
    training.set_step(0, 100)
    first, second = next(training.epoch(0))
    assert one.shape == (8, 3, 16, 16) if schedule else one.shape == (8, 3, 32, 32)
    assert torch.equal(one, first[:8]) and torch.equal(two, second[:8])
    assert originals.shape == (8, 3, 32, 32) and originals.dtype == torch.uint8


@pytest.mark.slow
def test_report_of_an_unlabelled_run(tmp_path: Path, tiny_folder: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted((tiny_folder / "train").rglob("*.png"))[:32]):
        shutil.copy(path, flat / f"{i:03d}.png")
    assert main(["pretrain", "--data", str(flat), "--out-dir", str(tmp_path / "run"), *TINY_RUN]) == 0
    page = build_report(tmp_path / "run", device="cpu")
    assert _images_of(page) == ["curves.png", "health.png", "views.png", "map.png", "neighbours.png"]
    assert "no labelled evaluation data" in page.read_text()
    rank = [json.loads(line)["rank_h"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "rank_h" in line]
    assert f"<td>rank_h</td><td>epoch 1: {rank[0]:.4g}" in page.read_text()  # the table shows the run's own numbers


@pytest.mark.slow
def test_a_folder_without_metrics_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "torchclr", "report", str(tmp_path)], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "metrics.jsonl" in lines[0] and str(tmp_path) in lines[0]


CHECK_IMAGES = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken', images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src).join(' '));
});</script>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_every_image_loads_in_headless_chromium(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    page = build_report(trained_run, device="cpu")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
               "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    assert 'data-images="5"' in dom and 'data-broken=""' in dom, dom[:500]
