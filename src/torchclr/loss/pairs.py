"""What every contrastive loss shares: checking the view layout, cosine similarities against the global batch,
and where each row's own column and its positives' columns are.

The layout is view-major: z [V·n, d] holds view 1 of this rank's n images, then view 2 of the same n images, and so
on (SimCLR's two views are V = 2; multi-crop runs give more). Every view of an image is a positive of every other.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from torchclr.distributed import gather_with_grad
from torchclr.errors import UserError


class Pairs(NamedTuple):
    """Cosine similarities of this rank's anchor rows (dim 0) against the rows of all ranks (dim 1).

    ``self_index[i]`` is the column of anchor row i itself, ``positive_index[i]`` [V - 1] the columns of the other
    views of its image (for V = 2: its one other view).
    """

    similarity: torch.Tensor
    self_index: torch.Tensor
    positive_index: torch.Tensor


def check_temperature(temperature: float) -> float:
    """The temperature comes from the user's config; a zero or negative one would divide by zero or flip the loss."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"temperature must be > 0, got {temperature}")
    return temperature


def check_views(views: int, anchor_views: int | None = None) -> tuple[int, int]:
    """(views, anchor views): at least two views (a single one has no positive), anchors among them (None: all)."""
    if views < 2:
        raise UserError(f"a contrastive loss needs at least 2 views per image, got {views}")
    anchors = views if anchor_views is None else anchor_views
    if not 1 <= anchors <= views:
        raise UserError(f"anchor views must be between 1 and the {views} views per image, got {anchor_views}")
    return views, anchors


@lru_cache(maxsize=16)
def view_indices(rows: int, views: int, anchor_rows: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(self_index [anchor_rows], positive_index [anchor_rows, views - 1]) for a view-major block of `rows` rows at
    column `offset` of the gathered batch. Built once per shape and kept: every step of a run has the same shape."""
    n = rows // views
    local = torch.arange(anchor_rows, device=device)
    shifts = torch.arange(1, views, device=device) * n
    return offset + local, offset + (local.unsqueeze(1) + shifts) % rows


def pair_similarities(z: torch.Tensor, l2_normalize: bool = True, views: int = 2, anchor_views: int | None = None) -> Pairs:
    """Normalise rows, gather them from all ranks and compute anchor-vs-global cosine similarities
    (plain dot products with `l2_normalize` off, the paper's table 5 ablation).

    ``z`` is [views·n, d] view-major (see the module's docstring); the anchors are the rows of the first
    `anchor_views` views (None: every row), so only their rows of the similarity matrix are computed. The maths
    runs in at least float32, autocast or not (bf16 would lose the small differences between similarities that
    the temperature blows up); float64 inputs stay float64 for gradcheck.
    """
    if z.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d [views x n, d] tensor, got shape {tuple(z.shape)}")
    rows = z.shape[0]
    if rows == 0 or rows % views != 0:
        raise ValueError(f"embeddings must hold {views} views of each image (a non-zero multiple of {views} rows), got {rows}")
    anchor_rows = rows // views * (views if anchor_views is None else anchor_views)
    # Autocast would run the matmul in bf16 again; the losses are cheap next to the encoder.
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        z = F.normalize(z, dim=1) if l2_normalize else z
        everyone, offset = gather_with_grad(z)
        similarity = z[:anchor_rows] @ everyone.T
    self_index, positive_index = view_indices(rows, views, anchor_rows, offset, z.device)
    return Pairs(similarity=similarity, self_index=self_index, positive_index=positive_index)


def positive_view_negatives(pairs: Pairs) -> torch.Tensor:
    """Boolean [anchors, views - 1, columns]: for each anchor and each of its positives, the negatives of that triplet
    taken from one augmentation view, the positive's: the other images' rows of the positive's view, N - 1 of them.

    The paper's NT-Logistic and margin losses use "negatives from one augmentation view" (footnote 8, appendix B.10);
    NT-Xent keeps all of them. With two views this is the other view's images, as the paper; with more (multi-crop)
    each (anchor, positive) triplet keeps the paper's rule, its negatives in the view (and crop size) of its positive.
    Every anchor row must be a row of the block (build_loss gives anchor views to NT-Xent only); every rank's block of
    the gathered columns is view-major as this rank's rows are.
    """
    rows, columns = pairs.similarity.shape
    images = rows // (pairs.positive_index.shape[1] + 1)
    column_view = torch.arange(columns, device=pairs.similarity.device) % rows // images
    positive_view = column_view[pairs.positive_index]
    same_view = positive_view.unsqueeze(2) == column_view
    return same_view.scatter(2, pairs.positive_index.unsqueeze(2), False)


def other_view_negatives(pairs: Pairs) -> torch.Tensor:
    """Boolean [anchors, columns]: the union of `positive_view_negatives` over an anchor's positives, the other images'
    rows in every view but the anchor's own (two views: the N - 1 other images of the other view)."""
    return positive_view_negatives(pairs).any(dim=1)


def mean_over_negatives(terms: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Average per-pair terms over each row's `negatives` (boolean, the shape of `terms`: [anchors, columns], or
    [anchors, positives, columns] for terms that depend on the positive too) along the last dimension; a row with no
    negatives (a single image in the whole batch) gives 0.

    Selects out of place: relu and friends keep their output for the backward pass."""
    return torch.where(negatives, terms, 0.0).sum(dim=-1) / negatives.sum(dim=-1).clamp(min=1)


def semi_hard_negative(pairs: Pairs, negatives: torch.Tensor) -> torch.Tensor:
    """Column [anchors] of each row's semi-hard negative among `negatives` [anchors, columns]: the most similar one
    that is still less similar than the row's positive (the closest negative farther than the positive); where there
    is none, the least similar negative of all, as TensorFlow's `triplet_semihard_loss` chooses.

    The paper (section 5.1, table 4) mines these for NT-Logistic and the margin loss after Schroff et al. (2015), one
    negative per anchor. A selection, so no gradient flows through it; under several processes it covers the
    negatives of every rank, as the similarities do. Defined for two views (one positive); `build_loss` refuses it
    for more.
    """
    similarity = pairs.similarity.detach()
    positive = similarity.gather(1, pairs.positive_index)
    easier = negatives & (similarity < positive)
    closest_easier = torch.where(easier, similarity, float("-inf")).argmax(dim=1)
    least_similar = torch.where(negatives, similarity, float("inf")).argmin(dim=1)
    return torch.where(easier.any(dim=1), closest_easier, least_similar)


def at_semi_hard_negative(terms: torch.Tensor, pairs: Pairs, negatives: torch.Tensor) -> torch.Tensor:
    """Per-pair terms [anchors, columns] read at each row's semi-hard negative; 0 for a row with no negatives at all
    (a single image in the whole batch), as `mean_over_negatives` gives."""
    chosen = terms.gather(1, semi_hard_negative(pairs, negatives).unsqueeze(1)).squeeze(1)
    return torch.where(negatives.any(dim=1), chosen, 0.0)
