"""benchmarks/gpu_reproduce.sh at toy size on the CPU (SMOKE=1): the summary holds what the run measured, the encoder
pieces rejoin to the trained encoder, and bad input (no data, a failing training step) is one line each while the
summary is still written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_reproduce.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_script(script: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The script as a user runs it, with this interpreter as its python3."""
    variables = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(out), **env}
    variables.pop("PYTHONPATH", None)  # the script puts its own src/ first
    return subprocess.run(["bash", str(script)], env=variables, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    root = tmp_path_factory.mktemp("reproduce")
    out, work = root / "out", root / "work"
    done = run_script(SCRIPT, out, SMOKE="1", SPLIT="1", WORK=str(work))
    return done, out, work


@pytest.mark.slow
def test_smoke_summary_holds_the_measured_run(smoke: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    done, out, work = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == {"subset": "ok", "train": "ok", "knn": "ok", "linear": "ok", "split": "ok"}
    assert summary["epochs"] == 2
    assert summary["optimizer_steps"] == 2 * 100 // 25  # 100 training images, batch 25, 2 epochs
    assert [point["epoch"] for point in summary["knn_curve"]] == [1, 2]  # --knn-every 1 in smoke mode
    accuracies = [point["knn_top1"] for point in summary["knn_curve"]]
    accuracies += [summary["final_knn_top1"], summary["final_linear_top1"]]
    assert all(math.isfinite(a) and 0 <= a <= 100 for a in accuracies)
    # The final kNN (torchclr evaluate on the exported file) and the monitor's last point score the same weights
    # with the same k and temperature: they agree to within one of the 50 test images.
    assert abs(summary["final_knn_top1"] - summary["knn_curve"][-1]["knn_top1"]) <= 2.0
    assert summary["linear_protocol"]["epochs"] == 2
    assert summary["pairs_per_s_overall"] > 0 and summary["training_minutes"] > 0
    assert summary["torch"] == torch.__version__ and summary["gpu"] == "none (CPU)"
    table = (out / "summary.md").read_text()
    assert f"| final kNN top-1 % (test) | {summary['final_knn_top1']:.2f} |" in table
    assert "1: " in table and "2: " in table


@pytest.mark.slow
def test_smoke_encoder_pieces_rejoin_to_the_trained_encoder(smoke: tuple[subprocess.CompletedProcess[str], Path, Path],
                                                             tmp_path: Path) -> None:
    from torchclr import load_encoder

    done, out, work = smoke
    pieces = json.loads((out / "summary.json").read_text())["encoder_pieces"]
    files = sorted(out.glob("encoder.safetensors.part-*"))
    assert [f.name for f in files] == pieces["pieces"] and len(files) >= 2  # ResNet-18 is ~45 MB
    assert all(f.stat().st_size <= 16 << 20 for f in files)
    for piece in files:  # the summary's one-line join command, run where the pieces were fetched to
        shutil.copy(piece, tmp_path / piece.name)
    printed = subprocess.run(["bash", "-c", pieces["join"]], cwd=tmp_path, capture_output=True, text=True, check=True)
    joined = tmp_path / "encoder.safetensors"
    assert printed.stdout.split()[0] == pieces["sha256"]
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == pieces["sha256"]
    assert (out / "encoder.safetensors.sha256").read_text().split()[0] == pieces["sha256"]
    rejoined, _, _ = load_encoder(joined)
    original, _, _ = load_encoder(work / "run" / "encoder.safetensors")
    for (name, a), (_, b) in zip(rejoined.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_failing_training_is_one_line_and_the_summary_is_still_written(tmp_path: Path) -> None:
    done = run_script(SCRIPT, tmp_path / "out", SMOKE="1", WORK=str(tmp_path / "work"), TRAIN_ARGS="--batch-size 100000")
    assert done.returncode == 1
    failures = [line for line in done.stdout.splitlines() if line.startswith("gpu_reproduce: train failed")]
    assert len(failures) == 1 and "(exit 2)" in failures[0] and "100000" in failures[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "kNN and linear evaluation skipped" in done.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == {"subset": "ok", "train": "exit 2"}
    assert summary["epochs"] == 0 and summary["final_knn_top1"] is None and summary["knn_curve"] == []


@pytest.mark.parametrize("data", ["", "does/not/exist.zip"])
def test_missing_data_is_one_line_and_the_summary_is_still_written(tmp_path: Path, data: str) -> None:
    done = run_script(SCRIPT, tmp_path / "out", DATA=data, WORK=str(tmp_path / "work"))
    assert done.returncode == 1
    lines = [line for line in done.stdout.splitlines() if line.startswith("gpu_reproduce: DATA")]
    assert len(lines) == 1 and (data or "not set") in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == {"data": "exit 2"} and summary["optimizer_steps"] == 0


RECIPE = ROOT / "benchmarks" / "gpu_recipe.sh"


@pytest.mark.slow
def test_recipe_smoke_ranks_the_cells_it_ran(tmp_path: Path) -> None:
    import yaml

    done = run_script(RECIPE, tmp_path / "out", SMOKE="1", WORK=str(tmp_path / "work"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert sorted(row["run"].split()[0] for row in rows) == ["base", "t0.2"]
    assert all(row["epochs"] == 1 and row["failed"] == {} and 0 <= row["knn_top1"] <= 100 for row in rows)
    assert rows[0]["knn_top1"] >= rows[1]["knn_top1"]  # best first
    # each cell is the preset with its own options: the temperature cell really trained at 0.2
    temperatures = {cell: yaml.safe_load((tmp_path / "work" / cell / "run" / "config.yaml").read_text())["temperature"]
                    for cell in ("base", "t0.2")}
    assert temperatures == {"base": 0.5, "t0.2": 0.2}


def test_recipe_unknown_cell_is_one_line(tmp_path: Path) -> None:
    done = run_script(RECIPE, tmp_path / "out", SMOKE="1", CELLS="nope", WORK=str(tmp_path / "work"))
    assert [line for line in done.stdout.splitlines() if "unknown cell" in line] == [
        "gpu_recipe: unknown cell nope (known: base crop0.2 wd5e-4 crop0.2+wd5e-4 sgd t0.2 head3 lr2 b1024 b256 sqrt s1.0): skipped"]
    assert json.loads((tmp_path / "out" / "recipe.json").read_text()) == []


def test_ablate_without_data_is_one_line(tmp_path: Path) -> None:
    done = run_script(ROOT / "benchmarks" / "gpu_ablate.sh", tmp_path / "out", DATA="missing.zip", STUDY="loss",
                      WORK=str(tmp_path / "work"))
    assert done.returncode == 1
    assert [line for line in done.stdout.splitlines() if line.startswith("gpu_ablate: DATA")] == [
        "gpu_ablate: DATA=missing.zip is not a file or folder: nothing to train (docs/gpu.md: copy the zip into a "
        "git-ignored folder and carry it)"]


@pytest.mark.slow
def test_ablate_smoke_writes_the_study_report_and_its_cells(tmp_path: Path) -> None:
    done = run_script(ROOT / "benchmarks" / "gpu_ablate.sh", tmp_path / "out", SMOKE="1", STUDY="color-strength",
                      WORK=str(tmp_path / "work"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = [json.loads(line) for line in (tmp_path / "out" / "color-strength-quick.jsonl").read_text().splitlines()]
    assert sorted(c["cell"] for c in cells) == sorted(["s=1/8", "s=1/4", "s=1/2", "s=1", "s=1 + blur"])
    assert all(0 <= c["knn_top1_h"] <= 100 for c in cells if "diverged" not in c)
    report = (tmp_path / "out" / "ablations.md").read_text()
    assert "## color-strength (Table 1), budget `quick`" in report and "5 of 5 runs done" in report
