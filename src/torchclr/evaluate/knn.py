"""Weighted kNN on h (Wu et al. 2018): the cheap per-epoch monitor of representation quality."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024, device: torch.device | None = None,
) -> torch.Tensor:
    """Class scores [M, C]: each of the k nearest (cosine) training features votes exp(sim / T) for its class.

    With `device` (e.g. the training GPU) the search runs there and the scores come back to the CPU: on a GPU the
    monitor's 10,000 x 50,000 similarities take milliseconds instead of seconds of host time."""
    bank = F.normalize(train_features.to(device).float(), dim=1)
    train_labels = train_labels.to(bank.device)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(test_features), chunk):
        query = F.normalize(test_features[start : start + chunk].to(bank.device).float(), dim=1)
        sims, idx = (query @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(query), num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores).to(test_features.device)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, top: int = 1) -> float:
    """Percentage of rows whose true label is among the `top` highest scores."""
    top = min(top, scores.shape[1])
    hits = (scores.topk(top, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hits.sum().item() / len(hits)
