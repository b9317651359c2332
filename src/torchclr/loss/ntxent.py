"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1), for two or more
views per image (multi-crop, Caron et al. 2020), in the multi-positive form of SupCon (Khosla et al. 2020, L_out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchclr.loss.pairs import check_temperature, check_views, pair_similarities


class NTXentLoss(nn.Module):
    """l(i) = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau) ), averaged over anchors.

    s is cosine similarity, P(i) the other `views` - 1 views of i's image, and k runs over all rows of the global
    batch, so every view of every other image of every rank is a negative. With two views P(i) is i's other view
    and this is the paper's eq. 1 exactly. The anchors are every row (SupCon's L_out), or with `anchor_views` only
    the rows of the first `anchor_views` views: the large views of a multi-crop batch, as SwAV computes its codes
    from the large crops only; every view still serves as positive and negative.
    """

    def __init__(self, temperature: float, l2_normalize: bool = True, *, views: int = 2, anchor_views: int | None = None) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.temperature = check_temperature(temperature)
        self.views, self.anchor_views = check_views(views, anchor_views)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Loss for z of shape [views x n, d] = [view 1 rows; view 2 rows; ...]."""
        pairs = pair_similarities(z, self.l2_normalize, self.views, self.anchor_views)
        logits = pairs.similarity.div_(self.temperature)
        # A row's similarity with itself is not a candidate: -inf drops it from the softmax without a copy.
        logits.scatter_(1, pairs.self_index.unsqueeze(1), float("-inf"))
        if pairs.positive_index.shape[1] == 1:  # two views: eq. 1 as cross-entropy, bit for bit the loss of torchclr 0.2
            return F.cross_entropy(logits, pairs.positive_index[:, 0])
        # -log softmax at the positives, averaged: a gather, no [rows, columns] mask.
        return -F.log_softmax(logits, dim=1).gather(1, pairs.positive_index).mean()

    def extra_repr(self) -> str:
        views = f", views={self.views}, anchor_views={self.anchor_views}" if self.views != 2 else ""
        return f"temperature={self.temperature}{views}"
