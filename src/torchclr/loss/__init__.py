"""Contrastive losses over a batch of paired views: NT-Xent (SimCLR's default) and the two table-2 alternatives."""

from __future__ import annotations

from torch import nn

from torchclr.errors import UserError
from torchclr.loss.margin_triplet import MarginTripletLoss
from torchclr.loss.nt_logistic import NTLogisticLoss
from torchclr.loss.ntxent import NTXentLoss

LOSS_NAMES = ("nt_xent", "nt_logistic", "margin_triplet")


def build_loss(name: str, temperature: float, margin: float, semi_hard: bool = False, l2_normalize: bool = True, *,
               views: int = 2, anchor_views: int | None = None) -> nn.Module:
    """Pick a loss by its config name; each loss only reads (and checks) the settings it uses.

    `semi_hard` applies to NT-Logistic and the margin loss (NT-Xent weighs every negative by its softmax already),
    with two views (it compares each negative with the one positive). Those two losses take each triplet's negatives
    from one augmentation view, its positive's (footnote 8, appendix B.10; NT-Xent keeps them all). `l2_normalize`
    off compares z by dot product instead of cosine similarity (the paper's table 5). `views` per image (multi-crop:
    more than 2) are laid out view-major; `anchor_views` (the large views, NT-Xent only) limits the anchors to the first that many views."""
    if semi_hard and name == "nt_xent":
        raise UserError("semi-hard negatives apply to the nt_logistic and margin_triplet losses, not nt_xent")
    if semi_hard and views > 2:
        raise UserError(f"--semi-hard compares each negative with the one positive of two views; --views gives {views} "
                        f"views per image (use --loss {name} without --semi-hard, or two views)")
    if anchor_views is not None and name != "nt_xent":
        raise UserError(f"--view-anchors large applies to --loss nt_xent, not --loss {name}")
    if name == "nt_xent":
        return NTXentLoss(temperature, l2_normalize, views=views, anchor_views=anchor_views)
    if name == "nt_logistic":
        return NTLogisticLoss(temperature, semi_hard, l2_normalize, views=views)
    if name == "margin_triplet":
        return MarginTripletLoss(margin, semi_hard, l2_normalize, views=views)
    raise UserError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {name!r}")


__all__ = ["LOSS_NAMES", "MarginTripletLoss", "NTLogisticLoss", "NTXentLoss", "build_loss"]
