"""Figure 9 of the paper: larger batches help most when training is short; the gap closes with more epochs."""

from __future__ import annotations

import math
from typing import Any

from torchclr.ablate.report import lines, summarise, table, verdict
from torchclr.ablate.runner import Budget, Cell, Figures, Study

PAPER_NOTE = ("Figure 9 (ResNet-50, ImageNet, linear top-1, batches 256-8192, 100-800 epochs): with few epochs "
              "(100) larger batches have a clear advantage; with more epochs the gaps shrink or vanish, and longer "
              "training helps every batch size")


BASE_LR = 3.0  # the other studies' base lr, x B/256 (LARS)


def _sqrt_scaled_lr(budget: Budget) -> float:
    """The other studies' lr (3.0 x B/256) at their batch, carried to every batch by the square-root rule instead: the
    extra row (appendix B.1 says square-root scaling works better for smaller batches and short runs)."""
    return BASE_LR * budget.batch_size / 256 / math.sqrt(budget.batch_size)


def _name(batch: int, epochs: int, sqrt: bool = False) -> str:
    return f"batch {batch}, {epochs} epochs" + (", sqrt lr" if sqrt else "")


def cells(budget: Budget) -> list[Cell]:
    """Figure 9's grid with linear lr scaling (3.0 x B/256, as the figure's runs), and the shortest schedule again
    with square-root scaling as an extra row."""
    out = []
    for epochs in budget.epoch_grid:
        for batch in budget.batch_sizes:
            # Batches above twice the study's usual one go through gradient caching in chunks of the usual one.
            chunk = str(budget.batch_size) if batch > 2 * budget.batch_size else "off"
            common = {"batch_size": batch, "epochs": epochs, "grad_cache_chunk": chunk}
            headline = epochs == budget.epoch_grid[0] and batch in (budget.batch_sizes[0], budget.batch_sizes[-1])
            out.append(Cell(_name(batch, epochs), {**common, "lr": BASE_LR, "lr_scaling": "linear"}, headline=headline))
            if epochs == budget.epoch_grid[0]:
                out.append(Cell(_name(batch, epochs, sqrt=True),
                                {**common, "lr": _sqrt_scaled_lr(budget), "lr_scaling": "sqrt"}))
    return out


def section(results: list[dict[str, Any]], budget: Budget, figures: Figures) -> str:
    stats = summarise(results, "knn_top1_h", budget.test_images)
    batches, grid = budget.batch_sizes, budget.epoch_grid
    rows = [(batch, *(stats[_name(batch, e)].shown() if _name(batch, e) in stats else "-" for e in grid),
             stats[_name(batch, grid[0], sqrt=True)].shown() if _name(batch, grid[0], sqrt=True) in stats else "-")
            for batch in batches]
    path, link = figures.png("batch-epochs", budget, "lines")
    lines(batches, {f"{e} epochs": [stats.get(_name(b, e)) for b in batches] for e in grid},
          "batch size x training epochs", "batch size (images)", path, log_x=True)
    short, long = grid[0], grid[-1]
    chunked = [b for b in batches if b > 2 * budget.batch_size]
    usual = budget.batch_size if budget.batch_size in batches else batches[0]
    return "\n\n".join([
        table(("batch", *(f"{e} epochs: kNN top-1 %" for e in grid), f"{grid[0]} epochs, sqrt lr: kNN top-1 %"), rows),
        f"Paper: {PAPER_NOTE}. Ours: LARS with linear lr scaling ({BASE_LR:g} x B/256), as Figure 9; the last column "
        f"repeats the shortest schedule with square-root scaling ({_sqrt_scaled_lr(budget):.3g} x sqrt(B)), which "
        f"appendix B.1 recommends for small batches and short runs; "
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
