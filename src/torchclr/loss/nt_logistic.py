"""NT-Logistic, the logistic alternative to NT-Xent in table 2 of the SimCLR paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchclr.loss.pairs import check_temperature, mean_over_negatives, pair_similarities


class NTLogisticLoss(nn.Module):
    """l(i) = -log sigmoid(s_ij / tau) - 1/(2N-2) * sum_{k != i, j} log sigmoid(-s_ik / tau), averaged over rows.

    Table 2 of the paper maximises log sigmoid(u.v+ / tau) + log sigmoid(-u.v- / tau) for one positive v+ and a
    negative v-; here the negative term is the mean over all 2N - 2 negatives of the global batch (s is cosine
    similarity, j is i's other view), so its weight relative to the positive term does not grow with the batch.
    `semi_hard`: the mean runs over the negatives with s_ik < s_ij only (the paper's table 4, see
    `torchclr.loss.pairs.semi_hard_negatives`).
    """

    def __init__(self, temperature: float, semi_hard: bool = False, l2_normalize: bool = True) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.temperature = check_temperature(temperature)
        self.semi_hard = semi_hard

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loss for z of shape [2n, d] = [view 1 rows; view 2 rows]."""
        pairs = pair_similarities(z, self.l2_normalize)
        logits = pairs.similarity / self.temperature
        positive = logits.gather(1, pairs.positive_index.unsqueeze(1)).squeeze(1)
        # -log sigmoid(x) = softplus(-x) and -log sigmoid(-x) = softplus(x), without overflow.
        negative = mean_over_negatives(F.softplus(logits), pairs, self.semi_hard)
        return (F.softplus(-positive) + negative).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, semi_hard={self.semi_hard}"
