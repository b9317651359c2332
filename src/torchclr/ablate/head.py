"""Figure 8 and section 4.2 of the paper: a non-linear projection head beats a linear one, which beats none; the
output size barely matters; and the representation before the head (h) beats the one after it (z)."""

from __future__ import annotations

from typing import Any

from torchclr.ablate.report import lines, summarise, table, verdict
from torchclr.ablate.runner import Budget, Cell, Figures, Study

PAPER_NOTE = ("section 4.2 and Figure 8 (ResNet-50, ImageNet, linear top-1): a non-linear head beats a linear one by "
              "about 3 points and no head by more than 10; the output size barely matters; h beats z = g(h) by more "
              "than 10 points")


def _name(kind: str, dim: int) -> str:
    return f"{kind} {dim}"


def _headline_dim(budget: Budget) -> int:
    return 128 if 128 in budget.head_dims else budget.head_dims[0]


def cells(budget: Budget) -> list[Cell]:
    out = [Cell("none", {"head": "none"}, headline=True, evaluate_z=True)]
    for kind, head in (("linear", "linear"), ("non-linear", "mlp")):
        out += [Cell(_name(kind, dim), {"head": head, "proj_dim": dim}, headline=dim == _headline_dim(budget), evaluate_z=True)
                for dim in budget.head_dims]
    return out


def section(results: list[dict[str, Any]], budget: Budget, figures: Figures) -> str:
    on_h = summarise(results, "knn_top1_h", budget.test_images)
    on_z = summarise(results, "knn_top1_z", budget.test_images)
    dims = budget.head_dims
    rows = [("none", "-", on_h["none"].shown() if "none" in on_h else "-", "(z = h)")]
    for kind in ("linear", "non-linear"):
        for dim in dims:
            name = _name(kind, dim)
            rows.append((kind, dim, on_h[name].shown() if name in on_h else "-", on_z[name].shown() if name in on_z else "-"))
    path, link = figures.png("head", budget, "lines")
    series = {f"{kind} (h)": [on_h.get(_name(kind, d)) for d in dims] for kind in ("linear", "non-linear")}
    series.update({f"{kind} (z)": [on_z.get(_name(kind, d)) for d in dims] for kind in ("linear", "non-linear")})
    series["none (h)"] = [on_h.get("none")] * len(dims)
    lines(dims, series, "projection head: output size, h versus z", "output dimension of the head", path, log_x=True)
    reference = _headline_dim(budget)
    mlp, linear = _name("non-linear", reference), _name("linear", reference)
    return "\n\n".join([
        table(("head", "output dim", "ours: kNN top-1 % on h", "ours: kNN top-1 % on z"), rows),
        f"Paper: {PAPER_NOTE}.",
        f"![projection head]({link})",
        "- " + verdict(on_h.get(mlp), on_h.get(linear), f"non-linear head beats linear (h, {reference}-d)"),
        "- " + verdict(on_h.get(linear), on_h.get("none"), f"linear head beats no head (h, {reference}-d)"),
        "- " + verdict(on_h.get(mlp), on_z.get(mlp), f"h beats z (non-linear head, {reference}-d)"),
    ])


STUDY = Study("head", "Figure 8, section 4.2", cells, section)
