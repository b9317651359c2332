"""What every contrastive loss shares: checking the view layout, cosine similarities against the global batch,
and where each row's own column and its positive's column are."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from torchclr.distributed import gather_with_grad
from torchclr.errors import UserError


class Pairs(NamedTuple):
    """Cosine similarities of this rank's rows (dim 0) against the rows of all ranks (dim 1).

    ``self_index[i]`` and ``positive_index[i]`` are the columns of local row i itself and of its other view.
    """

    similarity: torch.Tensor
    self_index: torch.Tensor
    positive_index: torch.Tensor


def check_temperature(temperature: float) -> float:
    """The temperature comes from the user's config; a zero or negative one would divide by zero or flip the loss."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"temperature must be > 0, got {temperature}")
    return temperature


def pair_similarities(z: torch.Tensor, l2_normalize: bool = True) -> Pairs:
    """Normalise rows, gather them from all ranks and compute local-vs-global cosine similarities
    (plain dot products with `l2_normalize` off, the paper's table 5 ablation).

    ``z`` is [2n, d] laid out as [view 1 of n images; view 2 of the same n images], so row i's positive
    is row (i + n) mod 2n. The maths runs in at least float32, autocast or not (bf16 would lose the small
    differences between similarities that the temperature blows up); float64 inputs stay float64 for gradcheck.
    """
    if z.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d [2n, d] tensor, got shape {tuple(z.shape)}")
    rows = z.shape[0]
    if rows == 0 or rows % 2 != 0:
        raise ValueError(f"embeddings must hold two views of each image (an even, non-zero number of rows), got {rows}")
    # Autocast would run the matmul in bf16 again; the losses are cheap next to the encoder.
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        z = F.normalize(z, dim=1) if l2_normalize else z
        everyone, offset = gather_with_grad(z)
        similarity = z @ everyone.T
    local = torch.arange(rows, device=z.device)
    return Pairs(
        similarity=similarity,
        self_index=offset + local,
        positive_index=offset + (local + rows // 2) % rows,
    )


def other_view_negatives(pairs: Pairs) -> torch.Tensor:
    """Boolean [2n, 2N]: the negatives of each row taken from one augmentation view only, the view its positive
    comes from (view-1 rows against view-2 columns and the other way round), its positive excluded: N - 1 per row.

    The paper's NT-Logistic and margin losses use "negatives from one augmentation view" (footnote 8, appendix B.10);
    NT-Xent keeps all 2N - 2. Every rank's block of the gathered columns is laid out as [view 1; view 2] of its n images.
    """
    rows, columns = pairs.similarity.shape
    device = pairs.similarity.device
    row_second_view = torch.arange(rows, device=device) >= rows // 2
    column_second_view = torch.arange(columns, device=device) % rows >= rows // 2
    other_view = row_second_view.unsqueeze(1) != column_second_view.unsqueeze(0)
    return other_view.scatter(1, pairs.positive_index.unsqueeze(1), False)


def mean_over_negatives(terms: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Average per-pair terms [2n, 2N] over each row's `negatives` (boolean, same shape); a row with none gives 0.

    Selects out of place: relu and friends keep their output for the backward pass."""
    return torch.where(negatives, terms, 0.0).sum(dim=1) / negatives.sum(dim=1).clamp(min=1)


def semi_hard_negative(pairs: Pairs, negatives: torch.Tensor) -> torch.Tensor:
    """Column [2n] of each row's semi-hard negative among `negatives`: the most similar one that is still less
    similar than the row's positive (the closest negative farther than the positive); where there is none, the least
    similar negative of all, as TensorFlow's `triplet_semihard_loss` chooses.

    The paper (section 5.1, table 4) mines these for NT-Logistic and the margin loss after Schroff et al. (2015), one
    negative per anchor. A selection, so no gradient flows through it; under several processes it covers the
    negatives of every rank, as the similarities do.
    """
    similarity = pairs.similarity.detach()
    positive = similarity.gather(1, pairs.positive_index.unsqueeze(1))
    easier = negatives & (similarity < positive)
    closest_easier = torch.where(easier, similarity, float("-inf")).argmax(dim=1)
    least_similar = torch.where(negatives, similarity, float("inf")).argmin(dim=1)
    return torch.where(easier.any(dim=1), closest_easier, least_similar)


def at_semi_hard_negative(terms: torch.Tensor, pairs: Pairs, negatives: torch.Tensor) -> torch.Tensor:
    """Per-pair terms [2n, 2N] read at each row's semi-hard negative; 0 for a row with no negatives at all (a single
    image in the whole batch), as `mean_over_negatives` gives."""
    chosen = terms.gather(1, semi_hard_negative(pairs, negatives).unsqueeze(1)).squeeze(1)
    return torch.where(negatives.any(dim=1), chosen, 0.0)
