"""Margin triplet loss, the hinge alternative to NT-Xent in table 2 of the SimCLR paper."""

from __future__ import annotations

import math

import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.loss.pairs import mean_over_negatives, pair_similarities


class MarginTripletLoss(nn.Module):
    """l(i) = 1/(2N-2) * sum_{k != i, j} max(s_ik - s_ij + m, 0), averaged over rows.

    Table 2 of the paper uses -max(u.v- - u.v+ + m, 0) as the objective for one negative v-; here the hinge is
    averaged over all 2N - 2 negatives of the global batch (s is cosine similarity, j is i's other view).
    There is no temperature: cosine similarities already live in [-1, 1], on the margin's scale.
    `semi_hard`: the mean runs over the negatives with s_ik < s_ij only (the paper's table 4, see
    `torchclr.loss.pairs.semi_hard_negatives`).
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
        return mean_over_negatives(hinge, pairs, self.semi_hard).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, semi_hard={self.semi_hard}"
