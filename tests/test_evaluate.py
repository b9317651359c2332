from __future__ import annotations

import math

import pytest
import torch

from torchclr.evaluate import accuracy, knn_predict, linear_probe


def test_knn_matches_a_brute_force_reference() -> None:
    torch.manual_seed(0)
    bank, labels, queries = torch.randn(50, 8), torch.randint(0, 3, (50,)), torch.randn(7, 8)
    k, t = 5, 0.1
    scores = knn_predict(bank, labels, queries, 3, k=k, temperature=t, chunk=3)
    for q in range(len(queries)):
        sims = [float(torch.dot(queries[q], bank[i]) / (queries[q].norm() * bank[i].norm())) for i in range(len(bank))]
        nearest = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        expected = [0.0, 0.0, 0.0]
        for i in nearest:
            expected[int(labels[i])] += math.exp(sims[i] / t)
        assert torch.allclose(scores[q], torch.tensor(expected), rtol=1e-4)


def test_accuracy_top_k() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert accuracy(scores, labels, 1) == 100 / 3
    assert accuracy(scores, labels, 2) == 200 / 3
    assert accuracy(scores, labels, 5) == 100


@pytest.mark.slow
def test_linear_probe_separates_separable_classes_and_not_noise() -> None:
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 3
    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,))
        return centres[y] + torch.randn(n, 16), y
    (xtr, ytr), (xte, yte) = sample(400), sample(200)
    good = linear_probe(xtr, ytr, xte, yte, 4)
    assert good.top1 > 95 and good.top5 == 100
    noise = linear_probe(torch.randn(400, 16), ytr, torch.randn(200, 16), yte, 4)
    assert noise.top1 < 40
