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


def mean_over_negatives(terms: torch.Tensor, pairs: Pairs, semi_hard: bool = False) -> torch.Tensor:
    """Average per-pair terms [2n, 2N] over each row's negatives: all columns but itself and its positive, or with
    `semi_hard` only those less similar to the row than its positive (s_ik < s_ij, as the paper's table 4).

    Zeroes the other columns out of place: relu and friends keep their output for the backward pass. A row with
    no negatives (a single image in the whole batch, or no semi-hard one) averages nothing, taken as 0.
    """
    excluded = torch.stack((pairs.self_index, pairs.positive_index), dim=1)
    if not semi_hard:
        terms = terms.scatter(1, excluded, 0.0)
        return terms.sum(dim=1) / max(terms.shape[1] - 2, 1)
    kept = semi_hard_negatives(pairs)
    return torch.where(kept, terms, 0.0).sum(dim=1) / kept.sum(dim=1).clamp(min=1)


def semi_hard_negatives(pairs: Pairs) -> torch.Tensor:
    """Boolean [2n, 2N]: the negatives k of row i with s_ik < s_ij, i.e. easier than its positive j.

    The paper (section 5.1, table 4) mines these for NT-Logistic and the margin loss, after Schroff et al. (2015):
    harder negatives (more similar than the positive) make those losses collapse. A selection, so no gradient flows
    through it; under several processes it covers the negatives of every rank, as the similarities do.
    """
    positive = pairs.similarity.gather(1, pairs.positive_index.unsqueeze(1))
    kept = pairs.similarity.detach() < positive.detach()
    return kept.scatter(1, pairs.self_index.unsqueeze(1), False)  # s_ii = 1 is never below s_ij, but rounding may say so
