"""NT-Logistic, the logistic alternative to NT-Xent in table 2 of the SimCLR paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchclr.loss.pairs import (at_semi_hard_negative, check_temperature, check_views, mean_over_negatives,
                                 other_view_negatives, pair_similarities)


class NTLogisticLoss(nn.Module):
    """l(i) = -mean_{p in P(i)} log sigmoid(s_ip / tau) - 1/|K(i)| * sum_{k in K(i)} log sigmoid(-s_ik / tau),
    averaged over rows.

    Table 2 of the paper maximises log sigmoid(u.v+ / tau) + log sigmoid(-u.v- / tau) for one positive v+ and a
    negative v-. The negatives K(i) are those of one augmentation view (footnote 8, appendix B.10): with two views
    the N - 1 other images' rows of i's positive's view (s is cosine similarity), averaged so that their weight
    relative to the positive term does not grow with the batch. With more `views` (multi-crop) the positive term is
    the mean over the other `views` - 1 views P(i) of i's image, and each positive's negatives are the other images
    of its view (`torchclr.loss.pairs.positive_view_negatives`): as every positive brings N - 1 of them, the mean over
    positives of their means is the mean over the other images in every view but i's own, K(i) here.
    `semi_hard`: one negative per row, the semi-hard one of Schroff et al. (the paper's table 4, two views, see
    `torchclr.loss.pairs.semi_hard_negative`).
    """

    def __init__(self, temperature: float, semi_hard: bool = False, l2_normalize: bool = True, *, views: int = 2) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.temperature = check_temperature(temperature)
        self.semi_hard = semi_hard
        self.views, _ = check_views(views)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loss for z of shape [views x n, d] = [view 1 rows; view 2 rows; ...]."""
        pairs = pair_similarities(z, self.l2_normalize, self.views)
        logits = pairs.similarity / self.temperature
        positive = logits.gather(1, pairs.positive_index)
        # -log sigmoid(x) = softplus(-x) and -log sigmoid(-x) = softplus(x), without overflow.
        negatives = other_view_negatives(pairs)
        if self.semi_hard:
            negative = at_semi_hard_negative(F.softplus(logits), pairs, negatives)
        else:
            negative = mean_over_negatives(F.softplus(logits), negatives)
        return (F.softplus(-positive).mean(dim=1) + negative).mean()

    def extra_repr(self) -> str:
        views = f", views={self.views}" if self.views != 2 else ""
        return f"temperature={self.temperature}, semi_hard={self.semi_hard}{views}"
