"""NT-Logistic, the logistic alternative to NT-Xent in table 2 of the SimCLR paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchclr.loss.pairs import (at_semi_hard_negative, check_temperature, mean_over_negatives, other_view_negatives,
                                 pair_similarities)


class NTLogisticLoss(nn.Module):
    """l(i) = -log sigmoid(s_ij / tau) - 1/(N-1) * sum_k log sigmoid(-s_ik / tau), averaged over rows.

    Table 2 of the paper maximises log sigmoid(u.v+ / tau) + log sigmoid(-u.v- / tau) for one positive v+ and a
    negative v-. The negatives k are those of one augmentation view (footnote 8, appendix B.10): the N - 1 other
    images' views in the view of i's positive j (s is cosine similarity), averaged so that their weight relative to
    the positive term does not grow with the batch. `semi_hard`: one negative per row, the semi-hard one of
    Schroff et al. (the paper's table 4, see `torchclr.loss.pairs.semi_hard_negative`).
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
        negatives = other_view_negatives(pairs)
        if self.semi_hard:
            negative = at_semi_hard_negative(F.softplus(logits), pairs, negatives)
        else:
            negative = mean_over_negatives(F.softplus(logits), negatives)
        return (F.softplus(-positive) + negative).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, semi_hard={self.semi_hard}"
