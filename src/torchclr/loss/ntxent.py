"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchclr.loss.pairs import check_temperature, pair_similarities


class NTXentLoss(nn.Module):
    """l(i, j) = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) ), averaged over this rank's 2n rows.

    s is cosine similarity, j is i's other view and k runs over all 2N rows of the global batch,
    so every other view of every rank is a negative.
    """

    def __init__(self, temperature: float, l2_normalize: bool = True) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.temperature = check_temperature(temperature)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loss for z of shape [2n, d] = [view 1 rows; view 2 rows]."""
        pairs = pair_similarities(z, self.l2_normalize)
        logits = pairs.similarity.div_(self.temperature)
        # A row's similarity with itself is not a candidate: -inf drops it from the softmax without a copy.
        logits.scatter_(1, pairs.self_index.unsqueeze(1), float("-inf"))
        return F.cross_entropy(logits, pairs.positive_index)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
