"""Multi-crop (SwAV, Caron et al. 2020): does SimCLR learn more per epoch from small extra views of each image, and
how many, how small? Every cell trains the same epochs (the budget's); the small views add compute, so each cell's
wall time is shown beside its accuracy.

The two large views keep the crop scale of the two-view cell (the study's base recipe), so that the small views are
the only change; the small ones take SwAV's (0.05, 0.14) of the whole image. SwAV reports multi-crop gains of 2-4
points of ImageNet linear top-1 for several methods, SimCLR among them.
"""

from __future__ import annotations

import statistics
from typing import Any

from torchclr.ablate.report import bars, diverged, summarise, table, verdict
from torchclr.ablate.runner import BASE_SETTINGS, Budget, Cell, Figures, Study

SMALL_COUNTS = (2, 4, 6)
HEADLINE_SMALL = 4
TWO_VIEWS = "2 views"


def _small_sizes(budget: Budget) -> tuple[int, int]:
    """Half the large side (SwAV's 96 against 224 is 0.43) and three quarters of it, at least 8 px."""
    return max(8, budget.image_size // 2), max(8, 3 * budget.image_size // 4)


def _name(count: int, size: int) -> str:
    return f"2 + {count} x {size} px"


def cells(budget: Budget) -> list[Cell]:
    large = budget.image_size
    low, high = BASE_SETTINGS["crop_scale"]
    pair = f"2x{large}@{low:g}-{high:g}"
    half, three_quarters = _small_sizes(budget)
    out = [Cell(TWO_VIEWS, {"views": f"2x{large}"}, headline=True)]
    out += [Cell(_name(count, half), {"views": f"{pair},{count}x{half}"}, headline=count == HEADLINE_SMALL)
            for count in SMALL_COUNTS]
    out.append(Cell(_name(HEADLINE_SMALL, three_quarters), {"views": f"{pair},{HEADLINE_SMALL}x{three_quarters}"}))
    return out


def section(results: list[dict[str, Any]], budget: Budget, figures: Figures) -> str:
    stats = summarise(results, "knn_top1_h", budget.test_images)
    failed = diverged(results)
    names = [cell.name for cell in cells(budget)]
    minutes = {name: statistics.mean(r["seconds"] for r in results if r["cell"] == name) / 60
               for name in names if any(r["cell"] == name for r in results)}
    rows = [(cell.name, f"`{cell.settings['views']}`",
             stats[cell.name].shown() if cell.name in stats else ("diverged" if cell.name in failed else "-"),
             f"{minutes[cell.name]:.1f}" if cell.name in minutes else "-") for cell in cells(budget)]
    path, link = figures.png("multi-crop", budget, "bars")
    bars(names, [stats.get(name) for name in names], "views per image (same epochs)", path)
    half = _small_sizes(budget)[0]
    headline = _name(HEADLINE_SMALL, half)
    return "\n\n".join([
        table(("views", "--views", "ours: kNN top-1 % (mean ± sd over seeds)", "minutes per run"), rows),
        f"![multi-crop]({link})",
        "- " + verdict(stats.get(headline), stats.get(TWO_VIEWS), f"{HEADLINE_SMALL} small views on top of 2 help "
                       "at the same epochs (SwAV: +2 to +4 points)"),
    ])


STUDY = Study("multi-crop", "SwAV multi-crop, Caron et al. 2020", cells, section)
