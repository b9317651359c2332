"""Linear evaluation: a multinomial logistic regression on frozen, cached h (the paper's protocol).

Features are extracted once, so the classifier trains in seconds with full-batch L-BFGS. The L2
strength is picked on a held-out tenth of the training split, then the classifier is refit on all of
it, so the test split is touched once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torchclr.evaluate.knn import accuracy

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class LinearResult:
    top1: float
    top5: float
    weight_decay: float
    val_top1: float


def _fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    classifier = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(features), labels) + weight_decay * classifier.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


@torch.no_grad()
def _scores(classifier: torch.nn.Linear, features: torch.Tensor) -> torch.Tensor:
    return classifier(features)


def linear_probe(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor,
    num_classes: int, weight_decays: tuple[float, ...] = WEIGHT_DECAYS, max_iter: int = 200, seed: int = 0,
) -> LinearResult:
    """Top-1/top-5 (%) on the test split of a linear classifier fit on standardised training features."""
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, len(order) // 10)
    val_idx, fit_idx = order[:n_val], order[n_val:]
    val_acc = {}
    for wd in weight_decays:
        classifier = _fit(train_x[fit_idx], train_labels[fit_idx], num_classes, wd, max_iter)
        val_acc[wd] = accuracy(_scores(classifier, train_x[val_idx]), train_labels[val_idx])
    best = max(weight_decays, key=lambda wd: (val_acc[wd], wd))
    classifier = _fit(train_x, train_labels, num_classes, best, max_iter)
    scores = _scores(classifier, test_x)
    return LinearResult(accuracy(scores, test_labels, 1), accuracy(scores, test_labels, 5), best, val_acc[best])
