"""The report's figures as PNG files (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from torchclr.errors import UserError
from torchclr.writer import save_figure


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UserError("torchclr report draws its figures with matplotlib: pip install 'torchclr[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(records: list[dict[str, Any]], path: Path) -> list[str]:
    """Loss and learning rate per step, kNN top-1 per epoch (the panels there are data for); returns their names."""
    plt = pyplot()
    panels = []
    steps = [r for r in records if "loss" in r and "step" in r]
    if steps:
        panels.append(("contrastive loss", "step", [r["step"] for r in steps], [r["loss"] for r in steps]))
    lrs = [r for r in records if "lr" in r and "step" in r]
    if lrs:
        panels.append(("learning rate", "step", [r["step"] for r in lrs], [r["lr"] for r in lrs]))
    knn = [r for r in records if "knn_top1" in r]
    if knn:
        panels.append(("kNN top-1 (%)", "epoch", [r["epoch"] for r in knn], [r["knn_top1"] for r in knn]))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for axis, (title, x_label, xs, ys) in zip(axes[0], panels):
        axis.plot(xs, ys, marker="o" if x_label == "epoch" else None)
        axis.set(title=title, xlabel=x_label)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return [title for title, *_ in panels]


def health(records: list[dict[str, Any]], path: Path) -> list[str]:
    """The label-free health metrics (torchclr.health) per epoch, one panel each; returns the metrics drawn."""
    from torchclr.health import HEALTH_METRICS

    measured = [r for r in records if "epoch" in r and any(name in r for name in HEALTH_METRICS)]
    names = [name for name in HEALTH_METRICS if any(name in r for r in measured)]
    if not names:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for axis, name in zip(axes[0], names):
        shown = [r for r in measured if name in r]
        axis.plot([r["epoch"] for r in shown], [r[name] for r in shown], marker="o")
        axis.set(title=name, xlabel="epoch")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return names


def scatter(points: np.ndarray, labels: np.ndarray | None, classes: list[str], title: str, path: Path) -> None:
    """The 2-D map, one colour per class (grey without labels)."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6.5, 5.5))
    if labels is None:
        axis.scatter(points[:, 0], points[:, 1], s=5, c="grey", alpha=0.6)
    else:
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for label, name in enumerate(classes):
            chosen = labels == label
            axis.scatter(points[chosen, 0], points[chosen, 1], s=5, alpha=0.7, color=colours(label % colours.N), label=name)
        axis.legend(markerscale=3, fontsize=8, loc="best", ncol=1 + len(classes) // 12)
    axis.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def per_class_bars(accuracy: dict[str, float], path: Path) -> None:
    plt = pyplot()
    names = list(accuracy)
    fig, axis = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 3.4))
    axis.bar(range(len(names)), [accuracy[n] for n in names], color="tab:blue")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set(ylabel="top-1 (%)", ylim=(0, 100), title="kNN accuracy per class")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
