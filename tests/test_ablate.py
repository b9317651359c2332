"""`torchclr ablate`: one real cell end to end, the bookkeeping that skips finished cells, the report, the verdicts
and the command's one-line errors, on a tiny budget (seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from torchclr.ablate import STUDIES, ablate, runner
from torchclr.ablate.report import Summary, verdict
from torchclr.ablate.runner import Budget, Cell, prepare_subset, read_results, run_cell, run_cells
from torchclr.errors import UserError

TINY = Budget("quick", train_images=16, test_images=8, epochs=1, batch_size=8, seeds=(0,), image_size=16,
              head_dims=(8,), batch_sizes=(4, 8), epoch_grid=(1,), about="test")


def test_subset_is_class_balanced_and_made_once(tmp_path: Path, tiny_folder: Path) -> None:
    subset = prepare_subset(str(tiny_folder), tmp_path, TINY)
    counts = {(split, name): len(list((subset / split / name).iterdir())) for split in ("train", "test")
              for name in ("circle", "stripes")}
    assert counts == {("train", "circle"): 8, ("train", "stripes"): 8, ("test", "circle"): 4, ("test", "stripes"): 4}
    stamp = (subset / "done.json").stat().st_mtime_ns
    assert prepare_subset(str(tiny_folder), tmp_path, TINY) == subset and (subset / "done.json").stat().st_mtime_ns == stamp
    with pytest.raises(runner.UserError, match="other data"):
        prepare_subset(str(tmp_path / "elsewhere"), tmp_path, TINY)


@pytest.mark.slow
def test_a_cell_pretrains_and_scores_h_and_z(tmp_path: Path, tiny_folder: Path) -> None:
    subset = prepare_subset(str(tiny_folder), tmp_path, TINY)
    cell = Cell("linear 8", {"head": "linear", "proj_dim": 8, "semi_hard": True, "loss": "nt_logistic"}, evaluate_z=True)
    result = run_cell(cell, 0, TINY, subset, tmp_path / "work", "cpu")
    assert result["cell"] == "linear 8" and result["seed"] == 0 and result["settings"] == cell.settings
    assert 0 <= result["knn_top1_h"] <= 100 and 0 <= result["knn_top1_z"] <= 100
    assert not (tmp_path / "work").exists()  # checkpoints of a finished cell are removed


@pytest.mark.slow
def test_a_diverged_cell_is_a_result(tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchclr.train
    from torchclr.guard import DivergedError

    def diverge(config: Any, *, ablation: Any = None) -> None:
        Path(config.out_dir).mkdir(parents=True)
        raise DivergedError("loss became nan by step 2")

    monkeypatch.setattr(torchclr.train, "pretrain", diverge)
    result = run_cell(Cell("no l2", {"l2_normalize": False}), 1, TINY, tmp_path, tmp_path / "work", "cpu")
    assert result["diverged"] == "loss became nan by step 2" and "knn_top1_h" not in result
    assert not (tmp_path / "work").exists()


def fake_cell(calls: list[tuple[str, int]]) -> Any:
    """Stands in for the pretraining: records the call, scores 40 x colour strength + seed (s = 1 the best)."""
    def run(cell: Cell, seed: int, budget: Budget, subset: Path, work: Path, device: str) -> dict[str, Any]:
        calls.append((cell.name, seed))
        score = 40 * cell.settings.get("jitter_strength", 0.5) + seed
        return {"cell": cell.name, "seed": seed, "settings": cell.settings, "knn_top1_h": score, "knn_top1_z": score - 30,
                "seconds": 1.0}
    return run


def test_finished_cells_are_skipped_and_seeds_added_later_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(runner, "run_cell", fake_cell(calls))
    cells, results = [Cell("a", headline=True), Cell("b")], tmp_path / "study.jsonl"
    run_cells(cells, (0, 1), TINY, tmp_path, results, "cpu", say=lambda _: None)
    assert calls == [("a", 0), ("a", 1), ("b", 0)]  # a grid cell gets the first seed only
    assert [(r["cell"], r["seed"]) for r in read_results(results)] == calls
    calls.clear()
    assert len(run_cells(cells, (0, 1), TINY, tmp_path, results, "cpu", say=lambda _: None)) == 3
    assert calls == []
    run_cells(cells, (0, 1, 2), TINY, tmp_path, results, "cpu", say=lambda _: None)
    assert calls == [("a", 2)]
    assert all(json.loads(line)["cell"] in "ab" for line in results.read_text().splitlines())


@pytest.mark.slow
def test_report_has_every_study_its_figures_and_verdicts(tmp_path: Path, tiny_folder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(runner, "run_cell", fake_cell(calls))
    report = tmp_path / "docs" / "ablations.md"
    written = ablate(list(STUDIES), TINY, (0, 1, 2), str(tiny_folder), tmp_path / "out", report, "cpu",
                     command="torchclr ablate all --budget quick", say=lambda _: None)
    text = written.read_text()
    assert written == report and text.startswith("# SimCLR's findings")
    assert "Command: `torchclr ablate all --budget quick`" in text and "Machine: " in text
    for name, study in STUDIES.items():
        assert f"## {name} ({study.paper}), budget `quick`" in text
    pngs = sorted(p.name for p in (tmp_path / "docs" / "ablations").iterdir())
    assert pngs == sorted(f"{name}-quick-{kind}.png" for name, kind in (("augment-pairs", "heatmap"), ("batch-epochs", "lines"),
                          ("color-strength", "bars"), ("head", "lines"), ("loss", "bars"),
                          ("multi-crop", "bars")))
    assert all(f"](ablations/{png})" in text for png in pngs)
    assert "stronger colour distortion helps (s = 1 over s = 1/8): **reproduces**" in text  # 40 points apart
    assert "h beats z (non-linear head, 8-d): **reproduces**" in text  # 30 points, beyond the binomial error on 8 images
    assert "59.6" in text and "63.9" in text  # the paper's numbers stand beside ours
    random = json.loads((tmp_path / "out" / "random-quick.json").read_text())["knn_top1_h"]
    assert 0 <= random <= 100 and f"with random weights scores {random:.1f}" in text
    # random weights separate the fixture's two easy classes perfectly: no fake score (at most 41) beats them
    assert random == 100.0 and "No cell beats random weights clearly (best 41.0)" in text
    report.unlink()
    ablate(["loss"], TINY, (0,), str(tiny_folder), tmp_path / "out", report, "cpu", say=lambda _: None, run=False,
           command="torchclr ablate loss --report-only")
    assert "Results from: `torchclr ablate all --budget quick`" in report.read_text()
    assert len(calls) == len({(n, s) for n, s in calls}) and report.read_text().count("## ") == len(STUDIES)


def test_verdicts() -> None:
    high, low = Summary(60.0, 1.0, 3, 0.6), Summary(50.0, 1.0, 3, 0.6)
    assert "**reproduces**" in verdict(high, low, "x")
    assert "**the opposite at this scale**" in verdict(low, high, "x")
    assert "**not resolved at this scale**" in verdict(Summary(50.5, 1.0, 3, 0.6), low, "x")
    assert "not measured" in verdict(None, low, "x")


@pytest.mark.parametrize("argv, message", [
    (["ablate", "bogus"], "invalid choice: 'bogus'"),
    (["ablate", "loss", "--budget", "huge"], "invalid choice: 'huge'"),
    (["ablate", "loss", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["ablate", "loss", "--seeds", "1,1"], "--seeds must list distinct seeds"),
])
def test_bad_input_is_one_line(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "torchclr", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_paper_s_numbers_in_a_bar_plot_stand_over_their_own_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchclr.ablate.report import _pyplot, bars

    plt = _pyplot()
    monkeypatch.setattr(plt, "close", lambda figure: None)  # keep the figure to read its lines back
    ours = Summary(30.0, 1.0, 3, 0.6)
    bars(["first", "second", "third"], [ours, None, ours], "t", tmp_path / "bars.png", {"third": 63.9, "first": 50.9})
    paper_line = plt.gcf().axes[1].lines[0].get_ydata()
    plt.close("all")
    assert paper_line[0] == 50.9 and paper_line[2] == 63.9 and paper_line[1] != paper_line[1]  # NaN where the paper has none
    assert (tmp_path / "bars.png").exists()


def test_a_broken_image_drawn_into_the_subset_is_skipped_and_counted(tmp_path: Path, tiny_folder: Path) -> None:
    import dataclasses
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    first = sorted((data / "train" / "circle").iterdir())[0]
    first.write_bytes(first.read_bytes()[:40])  # a file cut short, under its own name
    said: list[str] = []
    every_image = dataclasses.replace(TINY, train_images=64)  # all 32 of each class drawn, the broken one with them
    subset = prepare_subset(str(data), tmp_path / "out", every_image, say=said.append)
    written = sum(len(list((subset / "train" / name).iterdir())) for name in ("circle", "stripes"))
    assert written == 63 and len(said) == 1 and "(train): skipped 1 of 64 image files (1 not an image)" in said[0] and first.name in said[0]


def test_a_folder_smaller_than_the_budget_s_largest_batch_is_refused_naming_data_and_budget(
        tmp_path: Path, tiny_folder: Path) -> None:
    import dataclasses

    too_big = dataclasses.replace(TINY, train_images=1_000, batch_sizes=(8, 100))  # 64 training images exist
    with pytest.raises(UserError) as caught:
        prepare_subset(str(tiny_folder), tmp_path, too_big)
    message = str(caught.value)
    assert f"--data {tiny_folder}" in message and "64 usable training images" in message
    assert "(100)" in message and "--budget quick" in message


@pytest.mark.slow
def test_the_multi_crop_study_runs_its_cells_at_the_quick_budget(tmp_path: Path, tiny_folder: Path) -> None:
    """Smoke test: the two-view cell and the headline multi-crop cell train and score at a tiny quick budget, and the
    section shows both with their --views and wall time."""
    from torchclr.ablate import multi_crop

    study = STUDIES["multi-crop"]
    cells = {cell.name: cell for cell in study.cells(TINY)}
    assert [cell.settings["views"] for cell in cells.values()] == [
        "2x16", "2x16@0.2-1,2x8", "2x16@0.2-1,4x8", "2x16@0.2-1,6x8", "2x16@0.2-1,4x12"]
    subset = prepare_subset(str(tiny_folder), tmp_path, TINY)
    results = [run_cell(cells[name], 0, TINY, subset, tmp_path / "work", "cpu") for name in (multi_crop.TWO_VIEWS, "2 + 4 x 8 px")]
    assert all(0 <= r["knn_top1_h"] <= 100 for r in results)
    figures = runner.Figures(tmp_path / "figures", "figures/")
    figures.folder.mkdir()
    text = study.section(results, TINY, figures)
    assert "`2x16@0.2-1,4x8`" in text and "4 small views on top of 2 help" in text and "(n=1)" in text


def test_loss_study_tunes_the_learning_rate_of_every_loss(tmp_path: Path) -> None:
    """Appendix B.10: each loss is compared at its own best learning rate, not at NT-Xent's."""
    from torchclr.ablate import loss as loss_study
    from torchclr.ablate.runner import BUDGETS

    cells = loss_study.cells(BUDGETS["default"])
    rates: dict[tuple[str, bool], set[float]] = {}
    for cell in cells:
        key = (cell.settings.get("loss", "nt_xent"), bool(cell.settings.get("semi_hard")))
        rates.setdefault(key, set()).add(cell.settings.get("lr", runner_base_lr()))
    assert set(rates) == {("nt_xent", False), ("nt_logistic", False), ("nt_logistic", True), ("margin_triplet", False),
                          ("margin_triplet", True)}
    assert all(len(found) >= 2 for found in rates.values()), rates
    assert len({cell.name for cell in cells}) == len(cells)
    # the report's best cell of a family may be one at another lr than 3.0
    results = [{"cell": cell.name, "seed": 0, "knn_top1_h": 90.0 if cell.settings.get("lr") == 1.0 else 50.0, "seconds": 1}
               for cell in cells]
    text = loss_study.section(results, BUDGETS["default"], runner.Figures(tmp_path, ""))
    rows = [line for line in text.splitlines() if line.startswith(("| NT-", "| margin"))][:5]
    assert len(rows) == 5 and all(", lr=1 | 90.0" in row for row in rows), rows


def runner_base_lr() -> float:
    from torchclr.ablate.runner import BASE_SETTINGS

    return BASE_SETTINGS["lr"]


def test_batch_epochs_study_scales_the_learning_rate_linearly() -> None:
    """Figure 9 scales the lr linearly with the batch: the effective lr of each main cell is proportional to its
    batch; the square-root rule is an extra row of the shortest schedule only."""
    from torchclr.ablate import batch_epochs
    from torchclr.ablate.runner import BUDGETS
    from torchclr.optim import scaled_lr

    budget = BUDGETS["default"]
    cells = batch_epochs.cells(budget)
    main = [c for c in cells if not c.name.endswith("sqrt lr")]
    assert len(main) == len(budget.batch_sizes) * len(budget.epoch_grid)
    for cell in main:
        effective = scaled_lr(cell.settings["lr"], cell.settings["batch_size"], cell.settings["lr_scaling"])
        assert effective == pytest.approx(3.0 * cell.settings["batch_size"] / 256)
    extra = [c for c in cells if c.name.endswith("sqrt lr")]
    assert {c.settings["epochs"] for c in extra} == {budget.epoch_grid[0]} and len(extra) == len(budget.batch_sizes)
    assert all(c.settings["lr_scaling"] == "sqrt" for c in extra)


# The command line with the tiny budget as --budget quick, in a process of its own (to be signalled).
TINY_ABLATE = f"""
import sys
from torchclr.ablate import BUDGETS
from torchclr.ablate.runner import Budget
from torchclr.cli import main
BUDGETS["quick"] = {TINY!r}
sys.exit(main(sys.argv[1:]))
"""


def _ablate_process(data: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TINY_ABLATE, "ablate", "head", "--budget", "quick", "--data", str(data),
                             "--out", str(out), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _recorded(results: Path) -> list[str]:
    """The cells of the results file; every line must be a whole result."""
    lines = results.read_text().splitlines() if results.exists() else []
    return [f"{json.loads(line)['cell']}/{json.loads(line)['seed']}" for line in lines]


@pytest.mark.slow
def test_sigterm_during_a_cell_records_nothing_of_it_and_the_rerun_redoes_it(tmp_path: Path, tiny_folder: Path) -> None:
    """Three points: the first cell's pretraining, the second's, and the second's evaluation (its encoder written)."""
    import signal
    import time

    out = tmp_path / "out"
    results, work = out / "head-quick.jsonl", out / "work"
    points = [(0, work / "run.lock"), (1, work / "run.lock"), (1, work / "encoder.safetensors")]
    for recorded, sign in points:
        process = _ablate_process(tiny_folder, out)
        deadline = time.monotonic() + 600
        while not (len(_recorded(results)) == recorded and sign.exists()) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
        assert "stopped by SIGTERM during cell " in lines[-1] and "run the same command again to redo this cell" in lines[-1]
        assert len(_recorded(results)) == recorded  # nothing of the interrupted cell, no half line
    assert _recorded(results) == ["none/0"]
    final = _ablate_process(tiny_folder, out)
    said, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    assert "head-quick.jsonl: 1 cells done before, 2 to run" in said
    assert sorted(_recorded(results)) == ["linear 8/0", "non-linear 8/0", "none/0"]
    assert not work.exists()


def test_a_signal_that_came_as_pretraining_ended_reaches_the_handler_before_it() -> None:
    """Between a run's last step and its return the loop no longer looks at the flag; ablate's handler (which stops
    between cells) must still see the signal."""
    import os
    import signal

    from torchclr.interrupt import StopSignals

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM and seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
