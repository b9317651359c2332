"""`torchclr ablate STUDY`: small-scale re-runs of the SimCLR paper's studies on labelled data (CIFAR-10), seeded,
with a Markdown report that sets the paper's numbers beside ours and says whether each finding reproduces.

Each cell is a short `torchclr.pretrain` run on a class-balanced subset, scored by kNN top-1 on held-out images;
results go to OUT/STUDY-BUDGET.jsonl one line per finished cell, so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from torchclr.ablate import augment_pairs, batch_epochs, color_strength, head, loss, multi_crop
from torchclr.ablate.report import Summary, summarise, verdict
from torchclr.ablate.runner import (BASE_RECIPE_NOTE, BUDGETS, Budget, Figures, Study, machine, prepare_subset,
                                   random_baseline, read_results, run_cells)
from torchclr.writer import append_line, write_text

# `all` runs them in this order: the long augment-pairs grid last.
STUDIES: dict[str, Study] = {s.name: s for s in (color_strength.STUDY, head.STUDY, loss.STUDY, batch_epochs.STUDY,
                                                 multi_crop.STUDY, augment_pairs.STUDY)}


def results_file(out: Path, study: str, budget: Budget) -> Path:
    return out / f"{study}-{budget.name}.jsonl"


def ablate(studies: list[str], budget: Budget, seeds: tuple[int, ...], data: str, out: Path, report: Path,
           device: str = "auto", command: str = "", say: Callable[[str], Any] = print, run: bool = True) -> Path:
    """Run every unfinished cell of `studies` at `budget` (`run` off: none), then write `report` (Markdown) with its
    PNGs in the folder named after it, covering every study and budget with results in `out`."""
    budget = dataclasses.replace(budget, seeds=seeds)
    load_before = _load()
    subset = prepare_subset(data, out, budget, say=say)
    random_baseline(subset, budget, out, device)
    if run and command:
        append_line(out / "commands.txt", command, what="the ablation's commands")  # the report names them
    for name in studies if run else []:
        study = STUDIES[name]
        say(f"study {name} ({study.paper}), budget {budget.name}")
        run_cells(study.cells(budget), seeds, budget, subset, results_file(out, name, budget), device, say)
    return write_report(out, report, data, command, f"{load_before} at the start, {_load()} at the end", budget)


def write_report(out: Path, report: Path, data: str, command: str, load: str, run_budget: Budget) -> Path:
    """The Markdown report of every study and budget with results in `out`; studies without any are listed as such."""
    figures = Figures(report.parent / report.stem, f"{report.stem}/")
    figures.folder.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    runs = sorted(set(log.read_text().splitlines())) if log.exists() else []
    parts = [
        "# SimCLR's findings re-checked at small scale (`torchclr ablate`)",
        f"Command: `{command}`  \n" + "".join(f"Results from: `{line}`  \n" for line in runs if line != command) +
        f"Machine: {machine()}  \nData: {data}  \nWritten: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1 min) {load}. Wall times count whatever "
        "else the machine ran during the cells.",
        "Every cell is a short `torchclr.pretrain` run on a class-balanced, seeded subset of the data's training "
        "split, then weighted kNN top-1 (k = 200, T = 0.1) of its frozen h (and z where said) on held-out test images "
        "against the same training images. The paper reports linear evaluation of ResNet-50 on ImageNet after 100+ "
        "epochs: absolute numbers are not comparable, only directions. A verdict says **reproduces** when our gap "
        "in the paper's direction exceeds twice its standard error (from the seed spread, and at least the binomial "
        "error of an accuracy on the test images), **the opposite** when it does so the other way, and **not resolved** "
        "otherwise.",
        BASE_RECIPE_NOTE,
    ]
    missing = []
    for name, study in STUDIES.items():
        found = False
        for budget in BUDGETS.values():
            budget = run_budget if budget.name == run_budget.name else budget
            results = read_results(results_file(out, name, budget))
            if not results:
                continue
            found = True
            minutes = sum(r["seconds"] for r in results) / 60
            baseline = out / f"random-{budget.name}.json"
            random = _against_random(json.loads(baseline.read_text())["knn_top1_h"], results, budget) \
                if baseline.exists() else ""
            planned = sum(len(budget.seeds) if cell.headline else 1 for cell in study.cells(budget))
            parts += [f"## {name} ({study.paper}), budget `{budget.name}`",
                      f"Scale: {budget.describe()}. {len(results)} of {planned} runs done, {minutes:.0f} min of wall "
                      f"time.{random}",
                      study.section(results, budget, figures)]
        if not found:
            missing.append(f"`{name}` ({study.paper})")
    if missing:
        parts.append(f"## Not run yet\n\nNo results in {out} for {', '.join(missing)}: `torchclr ablate STUDY` runs them.")
    report.parent.mkdir(parents=True, exist_ok=True)
    write_text(report, "\n\n".join(parts) + "\n", what="the ablation report")
    return report


def _against_random(random: float, results: list[dict[str, Any]], budget: Budget) -> str:
    """The random-weights baseline, and a warning when no cell beats it clearly: then no verdict below can speak
    for or against the paper."""
    line = f" The same network with random weights scores {random:.1f}."
    summaries = summarise(results, "knn_top1_h", budget.test_images).values()
    best = max(summaries, key=lambda summary: summary.mean, default=None)
    if best is None or verdict(best, Summary(random, 0.0, 1, best.se), "").startswith(": **reproduces**"):
        return line
    return line + (f" **No cell beats random weights clearly (best {best.mean:.1f}): at this budget the pretraining has "
                   "not learnt enough for the verdicts below to speak for or against the paper.**")


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


__all__ = ["BUDGETS", "STUDIES", "ablate"]
