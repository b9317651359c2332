"""Figure 9 of the paper: larger batches help most when training is short; the gap closes with more epochs."""

from __future__ import annotations

import math
from typing import Any

from torchclr.ablate.report import lines, summarise, table, verdict
from torchclr.ablate.runner import Budget, Cell, Figures, Study

PAPER_NOTE = ("Figure 9 (ResNet-50, ImageNet, linear top-1, batches 256-8192, 100-800 epochs): with few epochs "
              "(100) larger batches have a clear advantage; with more epochs the gaps shrink or vanish, and longer "
              "training helps every batch size")


def _sqrt_scaled_lr(budget: Budget) -> float:
    """The other studies' lr (3.0 x B/256) at their batch, carried to every batch by the square-root rule
    (appendix B.1: square-root scaling suits short runs and large batches)."""
    return 3.0 * budget.batch_size / 256 / math.sqrt(budget.batch_size)


def _name(batch: int, epochs: int) -> str:
    return f"batch {batch}, {epochs} epochs"


def cells(budget: Budget) -> list[Cell]:
    out = []
    for epochs in budget.epoch_grid:
        for batch in budget.batch_sizes:
            # Batches above twice the study's usual one go through gradient caching in chunks of the usual one.
            chunk = str(budget.batch_size) if batch > 2 * budget.batch_size else "off"
            settings = {"batch_size": batch, "epochs": epochs, "lr": _sqrt_scaled_lr(budget), "lr_scaling": "sqrt",
                        "grad_cache_chunk": chunk}
            headline = epochs == budget.epoch_grid[0] and batch in (budget.batch_sizes[0], budget.batch_sizes[-1])
            out.append(Cell(_name(batch, epochs), settings, headline=headline))
    return out


def section(results: list[dict[str, Any]], budget: Budget, figures: Figures) -> str:
    stats = summarise(results, "knn_top1_h", budget.test_images)
    batches, grid = budget.batch_sizes, budget.epoch_grid
    rows = [(batch, *(stats[_name(batch, e)].shown() if _name(batch, e) in stats else "-" for e in grid)) for batch in batches]
    path, link = figures.png("batch-epochs", budget, "lines")
    lines(batches, {f"{e} epochs": [stats.get(_name(b, e)) for b in batches] for e in grid},
          "batch size x training epochs", "batch size (images)", path, log_x=True)
    short, long = grid[0], grid[-1]
    chunked = [b for b in batches if b > 2 * budget.batch_size]
    usual = budget.batch_size if budget.batch_size in batches else batches[0]
    return "\n\n".join([
        table(("batch", *(f"{e} epochs: kNN top-1 %" for e in grid)), rows),
        f"Paper: {PAPER_NOTE}. Ours: LARS with the square-root lr rule (base {_sqrt_scaled_lr(budget):.3g} x sqrt(B)); "
        f"batches {', '.join(map(str, chunked)) or '(none)'} run with gradient caching in chunks of {budget.batch_size}. "
        f"At a fixed number of epochs a larger batch takes fewer steps: on a small subset the largest batches take only "
        f"a few steps per epoch.",
        f"![batch and epochs]({link})",
        "- " + verdict(stats.get(_name(batches[-1], short)), stats.get(_name(batches[0], short)),
                       f"at {short} epochs the largest batch ({batches[-1]}) beats the smallest ({batches[0]})"),
        "- " + verdict(stats.get(_name(usual, long)), stats.get(_name(usual, short)),
                       f"training longer ({long} over {short} epochs) helps"),
    ])


STUDY = Study("batch-epochs", "Figure 9", cells, section)
