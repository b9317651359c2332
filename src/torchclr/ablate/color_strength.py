"""Table 1 of the paper: stronger colour distortion helps contrastive learning (and blur on top helps more)."""

from __future__ import annotations

from typing import Any

from torchclr.ablate.report import bars, diverged, summarise, table, verdict
from torchclr.ablate.runner import Budget, Cell, Figures, Study

STRENGTHS = (0.125, 0.25, 0.5, 1.0)
# Table 1, SimCLR row: linear top-1 (%) of ResNet-50 on ImageNet for s = 1/8, 1/4, 1/2, 1 and 1 (+ blur).
PAPER = (59.6, 61.0, 62.6, 63.2, 64.5)
LABELS = ("s=1/8", "s=1/4", "s=1/2", "s=1", "s=1 + blur")


def cells(budget: Budget) -> list[Cell]:
    plain = [Cell(label, {"jitter_strength": s}, headline=True) for label, s in zip(LABELS, STRENGTHS)]
    return plain + [Cell(LABELS[-1], {"jitter_strength": 1.0, "blur_p": 0.5}, headline=True)]


def section(results: list[dict[str, Any]], budget: Budget, figures: Figures) -> str:
    stats = summarise(results, "knn_top1_h", budget.test_images)
    failed = diverged(results)
    rows = [(label, stats[label].shown() if label in stats else ("diverged" if label in failed else "-"), paper)
            for label, paper in zip(LABELS, PAPER)]
    path, link = figures.png("color-strength", budget, "bars")
    bars(LABELS, [stats.get(label) for label in LABELS], "colour distortion strength s", path, dict(zip(LABELS, PAPER)))
    return "\n\n".join([
        table(("colour distortion", "ours: kNN top-1 % (mean ± sd over seeds)", "paper: linear top-1 % (Table 1)"), rows),
        f"![colour strength]({link})",
        "- " + verdict(stats.get("s=1"), stats.get("s=1/8"), "stronger colour distortion helps (s = 1 over s = 1/8)"),
        "- " + verdict(stats.get("s=1 + blur"), stats.get("s=1"), "blur on top of s = 1 helps"),
    ])


STUDY = Study("color-strength", "Table 1", cells, section)
