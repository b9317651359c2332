"""`--protocol logreg`: a multinomial logistic regression on frozen, cached h, the paper's transfer protocol
(appendix B.8: L-BFGS on the features of centre views, L2 strength picked on held-out data, no augmentation).

It is not the paper's linear evaluation (`torchclr.evaluate.linear`: SGD on random crops, 90 epochs on ImageNet),
but it costs a single pass of the encoder: features are extracted once, so the classifier trains in seconds with
full-batch L-BFGS. The L2 strength is picked on a held-out tenth of the training split, then the classifier is
refit on all of it, so the test split is touched once. Beyond `FULL_BATCH_MAX_VALUES` feature values (ImageNet's
1.28M x 2048 are 20 times more) L-BFGS's full-batch passes and its copies of them no longer fit, and the same
objective is minimised by minibatch SGD instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torchclr.evaluate.knn import accuracy

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
FULL_BATCH_MAX_VALUES = 1 << 27  # training features x dimensions up to which full-batch L-BFGS is used (512 MB)
SGD_EPOCHS, SGD_BATCH, SGD_LR = 10, 1024, 0.1


@dataclass
class LinearResult:
    top1: float
    top5: float
    weight_decay: float
    val_top1: float


def _fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int) -> torch.nn.Linear:
    if features.numel() > FULL_BATCH_MAX_VALUES:
        return _fit_sgd(features, labels, num_classes, weight_decay)
    return _fit_lbfgs(features, labels, num_classes, weight_decay, max_iter)


def _fit_lbfgs(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int) -> torch.nn.Linear:
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


def _fit_sgd(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
             epochs: int = SGD_EPOCHS, batch_size: int = SGD_BATCH, lr: float = SGD_LR) -> torch.nn.Linear:
    """The L-BFGS objective (mean cross-entropy + weight_decay x |W|^2) by minibatch SGD with momentum and a cosine
    learning rate: memory for one minibatch beyond the features, whatever their number."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=shuffle).to(features.device)
        for start in range(0, len(features), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(features[index]), labels[index]) + weight_decay * classifier.weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
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
