"""The health metrics as plain functions of embeddings (see `torchclr.health` for what each means and its source).

All work in float64 on the CPU: the inputs are a few hundred rows, and rank and retrieval must not depend on the
rounding of the run's autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RANKME_EPSILON = 1e-7  # Garrido et al. (2023), section 3
TIE_TOLERANCE = 1e-12  # cosine similarities this close are one value (identical rows differ by matmul rounding)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().double().cpu(), dim=1)


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs (rows of z1 and z2), on normalised z; 0 when views agree."""
    return (_unit(z1) - _unit(z2)).norm(dim=1).pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over distinct pairs of rows, on normalised z: 0 for collapsed embeddings,
    more negative the more evenly they cover the sphere."""
    return torch.pdist(_unit(z)).pow(2).mul(-t).exp().mean().log().item()


def effective_rank(h: torch.Tensor, epsilon: float = RANKME_EPSILON) -> float:
    """RankMe: exp(-sum p_k log p_k), p_k = sigma_k / ||sigma||_1 + epsilon, over the singular values of h (not
    normalised, not centred, as the paper defines it). At most min(rows, columns)."""
    singular = torch.linalg.svdvals(h.detach().double().cpu())
    p = singular / singular.sum().clamp(min=torch.finfo(torch.float64).tiny) + epsilon
    return math.exp(-(p * p.log()).sum().item())


def dimension_std(x: torch.Tensor) -> float:
    """Standard deviation of each dimension of the normalised rows, mean over dimensions: 1/sqrt(d) for rows spread
    evenly over the sphere, 0 when all rows point the same way."""
    return _unit(x).std(dim=0).mean().item()


def view_retrieval_top1(first: torch.Tensor, second: torch.Tensor) -> float:
    """Top-1 accuracy (%) of finding row i's partner (row i of the other tensor) among all 2N - 1 other rows by
    cosine similarity. Ties (within float64 rounding) count as a random pick among the tied rows, so identical rows
    score chance, 100/(2N-1)."""
    rows = _unit(torch.cat([first, second]))
    count = len(rows)
    similarity = rows @ rows.T
    similarity.fill_diagonal_(-math.inf)
    best = similarity.max(dim=1, keepdim=True).values - TIE_TOLERANCE
    tied = (similarity >= best).sum(dim=1)
    partner = torch.arange(count).roll(count // 2)
    hit = similarity[torch.arange(count), partner] >= best.squeeze(1)
    return 100.0 * (hit.double() / tied).mean().item()


def health_metrics(h1: torch.Tensor, h2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    """Every metric of `torchclr.health.HEALTH_METRICS` for h and z of two views of the same N images (row i of each)."""
    both_h, both_z = torch.cat([h1, h2]), torch.cat([z1, z2])
    return {
        "alignment": alignment(z1, z2),
        "uniformity": (uniformity(z1) + uniformity(z2)) / 2,  # as Wang & Isola's loss averages the two views
        "rank_h": effective_rank(both_h),
        "std_z": dimension_std(both_z),
        "std_h": dimension_std(both_h),
        "view_top1": view_retrieval_top1(h1, h2),
    }


def chance_top1(images: int) -> float:
    """view_top1 (%) of a representation that cannot tell images apart."""
    return 100.0 / (2 * images - 1)
