"""Label-free health of a SimCLR representation, measured every epoch on a fixed slice of the training images.

A contrastive loss can fall while the representation collapses (every image mapped to nearly one point, or onto
a few directions); without labels the kNN monitor cannot see it. These numbers can, and need no labels:

- alignment, uniformity: Wang & Isola (2020), "Understanding Contrastive Representation Learning through Alignment
  and Uniformity on the Hypersphere", on the normalised z of two views (alpha = 2, t = 2);
- rank_h: RankMe, Garrido et al. (2023), the effective rank of h (exp of the entropy of its normalised
  singular values, epsilon 1e-7);
- std_z, std_h: the per-dimension standard deviation of normalised z and h, mean over dimensions (1/sqrt(d) for
  embeddings spread over the sphere, 0 at collapse);
- view_top1: top-1 accuracy (%) of finding each view's partner, by cosine similarity of h, among the other views
  of the slice (chance: 100 / (2N - 1)).

This module holds only the names (importable without torch, for option checking); `torchclr.health.measures`
computes them and `torchclr.health.monitor` runs them during training.
"""

from __future__ import annotations

HEALTH_METRICS = ("alignment", "uniformity", "rank_h", "std_z", "std_h", "view_top1")
# Metrics a checkpoint may be chosen by (--keep-best) and whether higher is better. Alignment is left out: it is
# best (0) for a collapsed representation, so it only means something beside uniformity.
KEEP_BEST_HIGHER = {"view_top1": True, "rank_h": True, "std_h": True, "std_z": True, "uniformity": False,
                    "knn_top1": True}
