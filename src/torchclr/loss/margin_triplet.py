"""Margin triplet loss, the hinge alternative to NT-Xent in table 2 of the SimCLR paper."""

from __future__ import annotations

import math

import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.loss.pairs import (at_semi_hard_negative, check_views, mean_over_negatives, other_view_negatives,
                                 pair_similarities, positive_view_negatives)


class MarginTripletLoss(nn.Module):
    """l(i) = mean_{p in P(i)} 1/|K(p)| * sum_{k in K(p)} max(s_ik - s_ip + m, 0), averaged over rows.

    Table 2 of the paper uses -max(u.v- - u.v+ + m, 0) as the objective for one negative v-; here the hinge is
    averaged over the negatives K(p) of one augmentation view (footnote 8, appendix B.10), the N - 1 other images'
    rows in the view of the positive p (s is cosine similarity), and over the triplets of every positive p, the other
    `views` - 1 views of i's image (with two views: its one other view, and this is the paper's rule; with more, each
    triplet keeps it, see `torchclr.loss.pairs.positive_view_negatives`).
    There is no temperature: cosine similarities already live in [-1, 1], on the margin's scale.
    `semi_hard`: one negative per row, the semi-hard one of Schroff et al. (the paper's table 4, two views, see
    `torchclr.loss.pairs.semi_hard_negative`).
    """

    def __init__(self, margin: float, semi_hard: bool = False, l2_normalize: bool = True, *, views: int = 2) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        if not (math.isfinite(margin) and margin >= 0):
            raise UserError(f"margin must be >= 0, got {margin}")
        self.margin, self.semi_hard = margin, semi_hard
        self.views, _ = check_views(views)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loss for z of shape [views x n, d] = [view 1 rows; view 2 rows; ...]."""
        pairs = pair_similarities(z, self.l2_normalize, self.views)
        positive = pairs.similarity.gather(1, pairs.positive_index)
        # [anchors, positives, columns]: one triplet per positive and column
        hinge = torch.relu(pairs.similarity.unsqueeze(1) - positive.unsqueeze(2) + self.margin)
        if self.semi_hard:  # two views, so one positive (build_loss refuses more)
            return at_semi_hard_negative(hinge.squeeze(1), pairs, other_view_negatives(pairs)).mean()
        return mean_over_negatives(hinge, positive_view_negatives(pairs)).mean()

    def extra_repr(self) -> str:
        views = f", views={self.views}" if self.views != 2 else ""
        return f"margin={self.margin}, semi_hard={self.semi_hard}{views}"
