"""Margin triplet loss, the hinge alternative to NT-Xent in table 2 of the SimCLR paper."""

from __future__ import annotations

import math

import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.loss.pairs import at_semi_hard_negative, mean_over_negatives, other_view_negatives, pair_similarities


class MarginTripletLoss(nn.Module):
    """l(i) = 1/(N-1) * sum_k max(s_ik - s_ij + m, 0), averaged over rows.

    Table 2 of the paper uses -max(u.v- - u.v+ + m, 0) as the objective for one negative v-; here the hinge is
    averaged over the negatives of one augmentation view (footnote 8, appendix B.10): the N - 1 other images' views
    in the view of i's positive j (s is cosine similarity). There is no temperature: cosine similarities already
    live in [-1, 1], on the margin's scale. `semi_hard`: one negative per row, the semi-hard one of Schroff et al.
    (the paper's table 4, see `torchclr.loss.pairs.semi_hard_negative`).
    """

    def __init__(self, margin: float, semi_hard: bool = False, l2_normalize: bool = True) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        if not (math.isfinite(margin) and margin >= 0):
            raise UserError(f"margin must be >= 0, got {margin}")
        self.margin, self.semi_hard = margin, semi_hard

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loss for z of shape [2n, d] = [view 1 rows; view 2 rows]."""
        pairs = pair_similarities(z, self.l2_normalize)
        positive = pairs.similarity.gather(1, pairs.positive_index.unsqueeze(1))
        hinge = torch.relu(pairs.similarity - positive + self.margin)
        negatives = other_view_negatives(pairs)
        if self.semi_hard:
            return at_semi_hard_negative(hinge, pairs, negatives).mean()
        return mean_over_negatives(hinge, negatives).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, semi_hard={self.semi_hard}"
