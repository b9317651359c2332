"""The multi-positive losses of multi-crop runs (V views per image, view-major z): equal to the two-view losses at
V = 2 (against the NT-Xent implementation before multi-crop and against lightly's), and value and gradient against
naive per-anchor loops for V = 3 and 4 with unequal groups (2 large views + 1 or 2 small ones)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchclr.errors import UserError
from torchclr.loss import NTXentLoss, build_loss
from torchclr.loss.pairs import view_indices

TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0)


def two_view_nt_xent(z: torch.Tensor, tau: float) -> torch.Tensor:
    """torchclr's NT-Xent before multi-crop (commit 4ca01d6), single process: cross-entropy over the 2n x 2n logits."""
    z = F.normalize(z.float(), dim=1)
    rows = z.shape[0]
    logits = (z @ z.T).div_(tau)
    local = torch.arange(rows)
    logits.scatter_(1, local.unsqueeze(1), float("-inf"))
    return F.cross_entropy(logits, (local + rows // 2) % rows)


def view_major(n: int, views: int, dim: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Views of one image correlated (a shared component plus noise), as real views are: positives are informative."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, dim, generator=generator, dtype=dtype)
    return torch.cat([images + 0.8 * torch.randn(n, dim, generator=generator, dtype=dtype) for _ in range(views)])


def naive_multi_positive(z: torch.Tensor, n: int, views: int, tau: float, anchor_views: int) -> torch.Tensor:
    """SupCon's L_out written anchor by anchor and positive by positive (row r is view r // n of image r % n)."""
    u = F.normalize(z, dim=1)
    terms = []
    for i in range(anchor_views * n):
        others = [k for k in range(len(u)) if k != i]
        denominator = torch.logsumexp(torch.stack([u[i] @ u[k] / tau for k in others]), dim=0)
        positives = [p for p in others if p % n == i % n]
        assert len(positives) == views - 1
        terms.append(torch.stack([denominator - u[i] @ u[p] / tau for p in positives]).mean())
    return torch.stack(terms).mean()


def one_view_negatives(i: int, p: int, n: int, rows: int) -> list[int]:
    """The negatives of anchor i with positive p from one augmentation view (the paper's footnote 8 / B.10), the
    positive's: the other images' rows in p's view (row r is view r // n of image r % n)."""
    return [k for k in range(rows) if k // n == p // n and k % n != i % n]


def naive_nt_logistic(z: torch.Tensor, n: int, tau: float) -> torch.Tensor:
    """Per positive p: -log sigmoid(s_ip / tau) and the mean of -log sigmoid(-s_ik / tau) over p's view's negatives;
    averaged over positives, then anchors."""
    u = F.normalize(z, dim=1)
    terms = []
    for i in range(len(u)):
        positives = [p for p in range(len(u)) if p != i and p % n == i % n]
        per_positive = [-F.logsigmoid(u[i] @ u[p] / tau)
                        + torch.stack([-F.logsigmoid(-(u[i] @ u[k]) / tau) for k in one_view_negatives(i, p, n, len(u))]).mean()
                        for p in positives]
        terms.append(torch.stack(per_positive).mean())
    return torch.stack(terms).mean()


def naive_margin_triplet(z: torch.Tensor, n: int, margin: float) -> torch.Tensor:
    u = F.normalize(z, dim=1)
    terms = []
    for i in range(len(u)):
        positives = [p for p in range(len(u)) if p != i and p % n == i % n]
        terms += [torch.stack([torch.relu(u[i] @ u[k] - u[i] @ u[p] + margin) for k in one_view_negatives(i, p, n, len(u))]).mean()
                  for p in positives]
    return torch.stack(terms).mean()


def value_and_grad(loss_fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_()
    value = loss_fn(z)
    value.backward()
    return value.detach(), z.grad


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("n", (2, 7, 64))
def test_two_views_equal_the_two_view_nt_xent(n: int, tau: float) -> None:
    z = view_major(n, 2, seed=n)
    got, got_grad = value_and_grad(NTXentLoss(tau), z)
    expected, expected_grad = value_and_grad(lambda x: two_view_nt_xent(x, tau), z)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("tau", (0.1, 0.5))
def test_two_views_equal_lightly(tau: float) -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    z = view_major(16, 2, dim=32, seed=3)
    first, second = z.chunk(2)
    expected = lightly_loss.NTXentLoss(temperature=tau)(first, second)
    torch.testing.assert_close(NTXentLoss(tau)(z), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("views", "anchor_views"), [(3, 3), (4, 4), (3, 2), (4, 2)])
@pytest.mark.parametrize("tau", (0.1, 0.5))
def test_multi_positive_nt_xent_matches_naive_loop(views: int, anchor_views: int, tau: float) -> None:
    """2 large views + 1 or 2 small ones; every view an anchor (SupCon) or only the large ones (SwAV's choice)."""
    n = 5
    z = view_major(n, views, seed=views, dtype=torch.float64)
    loss = NTXentLoss(tau, views=views, anchor_views=None if anchor_views == views else anchor_views)
    got, got_grad = value_and_grad(loss, z)
    expected, expected_grad = value_and_grad(lambda x: naive_multi_positive(x, n, views, tau, anchor_views), z)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_multi_positive_float32_close_to_float64() -> None:
    z = view_major(6, 4, seed=1, dtype=torch.float64)
    loss = NTXentLoss(0.1, views=4)
    got, got_grad = value_and_grad(loss, z.float())
    expected, expected_grad = value_and_grad(loss, z)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_large_anchors_differ_from_all_anchors() -> None:
    """The two variants are different objectives (else the choice between them would be moot)."""
    z = view_major(5, 4, seed=2)
    assert NTXentLoss(0.1, views=4)(z).item() != pytest.approx(NTXentLoss(0.1, views=4, anchor_views=2)(z).item(), rel=1e-3)


@pytest.mark.parametrize("views", (3, 4))
@pytest.mark.parametrize("loss", ("nt_logistic", "margin_triplet"))
def test_other_losses_over_several_views_match_naive_loops(loss: str, views: int) -> None:
    n = 4
    z = view_major(n, views, seed=views, dtype=torch.float64)
    naive = {"nt_logistic": lambda x: naive_nt_logistic(x, n, 0.2), "margin_triplet": lambda x: naive_margin_triplet(x, n, 0.5)}
    got, got_grad = value_and_grad(build_loss(loss, 0.2, 0.5, views=views), z)
    expected, expected_grad = value_and_grad(naive[loss], z)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_view_indices_are_built_once_per_shape() -> None:
    z = view_major(3, 3)
    loss = NTXentLoss(0.1, views=3)
    loss(z)
    before = view_indices.cache_info()
    loss(z)
    after = view_indices.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)


def test_rows_not_a_multiple_of_the_views_raise() -> None:
    with pytest.raises(ValueError, match="3 views of each image"):
        NTXentLoss(0.1, views=3)(torch.randn(8, 4))


def test_refusals_name_the_options() -> None:
    with pytest.raises(UserError, match=r"^--semi-hard .*--views gives 3 views"):
        build_loss("margin_triplet", 0.1, 0.5, semi_hard=True, views=3)
    with pytest.raises(UserError, match=r"^--view-anchors large applies to --loss nt_xent, not --loss nt_logistic$"):
        build_loss("nt_logistic", 0.1, 0.5, views=4, anchor_views=2)
    with pytest.raises(UserError, match="at least 2 views"):
        build_loss("nt_xent", 0.1, 0.5, views=1)
