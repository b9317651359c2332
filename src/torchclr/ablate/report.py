"""Turning a study's cell results into its Markdown section: mean and spread per cell, plots, and the verdict
on whether the paper's direction reproduces at this scale."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torchclr.writer import save_figure


@dataclass(frozen=True)
class Summary:
    """One cell over its seeds: mean, sample standard deviation (0 for one seed), seeds, and the standard error of
    the mean, at least the binomial error of one accuracy on `test_images` (so a single seed is not taken as exact)."""

    mean: float
    sd: float
    seeds: int
    se: float

    def shown(self) -> str:
        return f"{self.mean:.1f} ± {self.sd:.1f} (n={self.seeds})" if self.seeds > 1 else f"{self.mean:.1f} (n=1)"


def summarise(results: list[dict[str, Any]], key: str, test_images: int) -> dict[str, Summary]:
    """{cell name: Summary of `key`} over the cells that reached it (diverged runs have no accuracy)."""
    values: dict[str, list[float]] = {}
    for result in results:
        if key in result:
            values.setdefault(result["cell"], []).append(result[key])
    out = {}
    for cell, scores in values.items():
        mean = statistics.fmean(scores)
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        binomial = 100 * math.sqrt(max(mean, 1.0) / 100 * max(100 - mean, 1.0) / 100 / test_images)
        out[cell] = Summary(mean, sd, len(scores), max(sd, binomial) / math.sqrt(len(scores)))
    return out


def diverged(results: list[dict[str, Any]]) -> list[str]:
    return sorted({r["cell"] for r in results if "diverged" in r})


def verdict(better: Summary | None, worse: Summary | None, claim: str) -> str:
    """Whether `better` beats `worse` as the paper says: by more than two standard errors of the difference."""
    if better is None or worse is None:
        return f"{claim}: not measured (cells missing or diverged)"
    gap = better.mean - worse.mean
    error = math.hypot(better.se, worse.se)
    if gap > 2 * error:
        return f"{claim}: **reproduces** ({gap:+.1f} points, more than twice its standard error {error:.1f})"
    if gap < -2 * error:
        return f"{claim}: **the opposite at this scale** ({gap:+.1f} points, standard error {error:.1f})"
    return f"{claim}: **not resolved at this scale** ({gap:+.1f} points, within twice its standard error {error:.1f})"


def _pyplot() -> Any:
    """matplotlib's pyplot, imported at first use (its module imports torch; `torchclr --help` should not)."""
    from torchclr.report.plots import pyplot

    return pyplot()


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bars(labels: Sequence[str], summaries: Sequence[Summary | None], title: str, path: Path,
         paper: Mapping[str, float] | None = None) -> None:
    """Mean kNN top-1 per setting with its seed spread (sd) as error bars; the paper's number of each label (looked
    up by label, so that the two cannot drift apart) on a second axis."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(max(4.5, 0.75 * len(labels) + 2), 3.4))
    positions = range(len(labels))
    means = [s.mean if s else float("nan") for s in summaries]
    spreads = [s.sd if s else 0.0 for s in summaries]
    axis.bar(positions, means, yerr=spreads, capsize=4, color="tab:blue", alpha=0.8, label="ours (kNN top-1)")
    axis.set_xticks(list(positions), labels, rotation=30, ha="right")
    axis.set(title=title, ylabel="kNN top-1 % (ours)")
    finite = [m for m in means if not math.isnan(m)]
    if finite:
        axis.set_ylim(max(0.0, min(finite) - 8), max(finite) + 5)
    if paper and any(label in paper for label in labels):
        other = axis.twinx()
        other.plot(list(positions), [paper.get(label, float("nan")) for label in labels], "o--", color="tab:orange",
                   label="paper (linear top-1)")
        other.set_ylabel("paper's top-1 %", color="tab:orange")
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def lines(x_values: Sequence[float], series: dict[str, Sequence[Summary | None]], title: str, x_label: str, path: Path,
          log_x: bool = False) -> None:
    """One line per series with mean and the seed spread (sd) as a band."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5.5, 3.6))
    for name, summaries in series.items():
        means = [s.mean if s else float("nan") for s in summaries]
        spreads = [s.sd if s else 0.0 for s in summaries]
        axis.errorbar(list(x_values), means, yerr=spreads, marker="o", capsize=3, label=name)
    if log_x:
        axis.set_xscale("log", base=2)
    axis.set(title=title, xlabel=x_label, ylabel="kNN top-1 %")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def heat_map(names: Sequence[str], grid: list[list[float | None]], title: str, path: Path) -> None:
    """A symmetric grid: the diagonal holds single transforms, off-diagonal cells the pairs."""
    import numpy as np

    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, axis = plt.subplots(figsize=(6.2, 5.2))
    image = axis.imshow(values, cmap="viridis")
    axis.set_xticks(range(len(names)), names, rotation=40, ha="right")
    axis.set_yticks(range(len(names)), names)
    for row in range(len(names)):
        for col in range(len(names)):
            if not np.isnan(values[row, col]):
                axis.text(col, row, f"{values[row, col]:.1f}", ha="center", va="center", color="white", fontsize=8)
    axis.set(title=title, xlabel="2nd transformation", ylabel="1st transformation")
    fig.colorbar(image, ax=axis, label="kNN top-1 %")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
