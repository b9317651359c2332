"""Table 1 of the paper: stronger colour distortion helps contrastive learning (and blur on top helps more)."""

from __future__ import annotations

from typing import Any

from torchclr.ablate.report import bars, diverged, summarise, table, verdict
from torchclr.ablate.runner import Budget, Cell, Figures, Study

# Table 1, SimCLR row: linear top-1 (%) of ResNet-50 on ImageNet, by label, with each cell's settings.
PAPER = {"s=1/8": 59.6, "s=1/4": 61.0, "s=1/2": 62.6, "s=1": 63.2, "s=1 + blur": 64.5}
SETTINGS = {"s=1/8": {"jitter_strength": 0.125}, "s=1/4": {"jitter_strength": 0.25}, "s=1/2": {"jitter_strength": 0.5},
            "s=1": {"jitter_strength": 1.0}, "s=1 + blur": {"jitter_strength": 1.0, "blur_p": 0.5}}


def cells(budget: Budget) -> list[Cell]:
    return [Cell(label, settings, headline=True) for label, settings in SETTINGS.items()]


def section(results: list[dict[str, Any]], budget: Budget, figures: Figures) -> str:
    stats = summarise(results, "knn_top1_h", budget.test_images)
    failed = diverged(results)
    rows = [(label, stats[label].shown() if label in stats else ("diverged" if label in failed else "-"), paper)
            for label, paper in PAPER.items()]
    path, link = figures.png("color-strength", budget, "bars")
    bars(list(PAPER), [stats.get(label) for label in PAPER], "colour distortion strength s", path, PAPER)
    return "\n\n".join([
        table(("colour distortion", "ours: kNN top-1 % (mean ± sd over seeds)", "paper: linear top-1 % (Table 1)"), rows),
        f"![colour strength]({link})",
        "- " + verdict(stats.get("s=1"), stats.get("s=1/8"), "stronger colour distortion helps (s = 1 over s = 1/8)"),
        "- " + verdict(stats.get("s=1 + blur"), stats.get("s=1"), "blur on top of s = 1 helps"),
    ])


STUDY = Study("color-strength", "Table 1", cells, section)
