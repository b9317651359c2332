"""The losses against plain-Python references written from the paper, their gradients and their input checks."""

from __future__ import annotations

import math

import pytest
import torch

from torchclr.errors import UserError
from torchclr.loss import MarginTripletLoss, NTLogisticLoss, NTXentLoss, build_loss

TEMPERATURES = (0.05, 0.1, 0.5)
IMAGE_COUNTS = (1, 3, 8)


def paper_order(z: torch.Tensor) -> list[list[float]]:
    """Our [view 1; view 2] rows in the paper's interleaved order: image k's views are rows 2k and 2k + 1."""
    n = z.shape[0] // 2
    rows = z.double().tolist()
    return [rows[k + view * n] for k in range(n) for view in (0, 1)]


def cosine_matrix(rows: list[list[float]]) -> list[list[float]]:
    """s_ij = u_i . u_j / (|u_i| |u_j|) with Python floats."""
    norms = [math.sqrt(sum(x * x for x in row)) for row in rows]
    return [
        [sum(a * b for a, b in zip(u, v)) / (norm_u * norm_v) for v, norm_v in zip(rows, norms)]
        for u, norm_u in zip(rows, norms)
    ]


def partner(i: int) -> int:
    """The other view of row i in the paper's order (0-based: 2k <-> 2k + 1)."""
    return i + 1 if i % 2 == 0 else i - 1


def dot_matrix(rows: list[list[float]]) -> list[list[float]]:
    """s_ij = u_i . u_j: the similarity without l2 normalisation (the paper's table 5)."""
    return [[sum(a * b for a, b in zip(u, v)) for v in rows] for u in rows]


def reference_nt_xent(z: torch.Tensor, tau: float, similarity=cosine_matrix) -> float:
    """Algorithm 1 of the paper, term by term."""
    s = similarity(paper_order(z))
    size = len(s)

    def ell(i: int, j: int) -> float:
        denominator = sum(math.exp(s[i][k] / tau) for k in range(size) if k != i)
        return -math.log(math.exp(s[i][j] / tau) / denominator)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(size // 2)) / size


def one_view_negatives(i: int, size: int) -> list[int]:
    """Row i's negatives from one augmentation view (the paper's footnote 8 / B.10): the other images' rows in the view
    of i's partner (paper order: view 1 at even rows, view 2 at odd ones)."""
    return [k for k in range(size) if k % 2 != i % 2 and k != partner(i)]


def tf_semi_hard(s_row: list[float], s_pos: float, negatives: list[int]) -> int:
    """TensorFlow Addons' triplet_semihard_loss in similarities: the negative with the smallest distance that is still
    larger than the positive's (the largest s below s_pos); when none is, the largest distance of all (the smallest s)."""
    farther = [k for k in negatives if s_row[k] < s_pos]
    if farther:
        return max(farther, key=lambda k: s_row[k])
    return min(negatives, key=lambda k: s_row[k])


def reference_mean_over_negatives(z: torch.Tensor, per_pair, per_anchor, semi_hard: bool = False) -> float:
    """Mean over anchors i of per_anchor(s_ij) + mean over i's one-view negatives k of per_pair(s_ik, s_ij) (0 with
    none); `semi_hard`: per_pair of the one semi-hard negative instead (Schroff et al. 2015, the paper's table 4)."""
    s = cosine_matrix(paper_order(z))
    size = len(s)
    total = 0.0
    for i in range(size):
        j = partner(i)
        negatives = one_view_negatives(i, size)
        if semi_hard and negatives:
            negatives = [tf_semi_hard(s[i], s[i][j], negatives)]
        terms = [per_pair(s[i][k], s[i][j]) for k in negatives]
        total += per_anchor(s[i][j]) + (sum(terms) / len(terms) if terms else 0.0)
    return total / size


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def reference_nt_logistic(z: torch.Tensor, tau: float, semi_hard: bool = False) -> float:
    return reference_mean_over_negatives(
        z, per_pair=lambda s_neg, _: -log_sigmoid(-s_neg / tau), per_anchor=lambda s_pos: -log_sigmoid(s_pos / tau),
        semi_hard=semi_hard,
    )


def reference_margin_triplet(z: torch.Tensor, margin: float, semi_hard: bool = False) -> float:
    return reference_mean_over_negatives(
        z, per_pair=lambda s_neg, s_pos: max(s_neg - s_pos + margin, 0.0), per_anchor=lambda _: 0.0, semi_hard=semi_hard
    )


def embeddings(n: int, dim: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2 * n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("n", IMAGE_COUNTS)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_xent_matches_algorithm_1(n: int, tau: float) -> None:
    z = embeddings(n, seed=n)
    assert NTXentLoss(tau)(z).item() == pytest.approx(reference_nt_xent(z, tau), abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("n", IMAGE_COUNTS)
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_logistic_matches_loop(n: int, tau: float) -> None:
    z = embeddings(n, seed=n)
    assert NTLogisticLoss(tau)(z).item() == pytest.approx(reference_nt_logistic(z, tau), abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("n", IMAGE_COUNTS)
@pytest.mark.parametrize("margin", (0.0, 0.5, 1.0))
def test_margin_triplet_matches_loop(n: int, margin: float) -> None:
    z = embeddings(n, seed=n)
    assert MarginTripletLoss(margin)(z).item() == pytest.approx(reference_margin_triplet(z, margin), abs=1e-5)


@pytest.mark.parametrize("tau", (0.5, 1.0))
def test_nt_xent_without_l2_normalisation_uses_dot_products(tau: float) -> None:
    z = embeddings(4, dim=8, seed=5) / 3
    expected = reference_nt_xent(z, tau, similarity=dot_matrix)
    assert build_loss("nt_xent", tau, 0.5, l2_normalize=False)(z).item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(reference_nt_xent(z, tau), rel=1e-3)


def semi_hard_embeddings(n: int, seed: int) -> torch.Tensor:
    """Views 2 loosely tied to views 1 (cosine ~0.3), so that some negatives are harder than the positive, most easier."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(n, 16, generator=generator)
    return torch.cat([first, first + 3.0 * torch.randn(n, 16, generator=generator)])


@pytest.mark.parametrize("n", IMAGE_COUNTS + (16,))
@pytest.mark.parametrize("tau", TEMPERATURES)
def test_semi_hard_nt_logistic_matches_loop(n: int, tau: float) -> None:
    z = semi_hard_embeddings(n, seed=n)
    expected = reference_nt_logistic(z, tau, semi_hard=True)
    assert NTLogisticLoss(tau, semi_hard=True)(z).item() == pytest.approx(expected, abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("n", IMAGE_COUNTS + (16,))
@pytest.mark.parametrize("margin", (0.0, 0.5, 1.0))
def test_semi_hard_margin_triplet_matches_loop(n: int, margin: float) -> None:
    z = semi_hard_embeddings(n, seed=n)
    expected = reference_margin_triplet(z, margin, semi_hard=True)
    assert MarginTripletLoss(margin, semi_hard=True)(z).item() == pytest.approx(expected, abs=1e-5)


def test_semi_hard_fixture_has_both_kinds_of_negatives() -> None:
    """The fixture holds negatives on both sides of the positive, so mining picks a strict subset (else the tests
    above are moot)."""
    z = semi_hard_embeddings(16, seed=16)
    s = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(z, dim=1).T
    positive = s.diagonal(16).repeat(2)
    easier = (s < positive[:, None]).sum().item()  # neither self (s = 1) nor the positive itself counts
    assert 0.5 * 32 * 30 < easier < 32 * 30
    assert NTLogisticLoss(0.5, semi_hard=True)(z).item() != pytest.approx(NTLogisticLoss(0.5)(z).item(), abs=1e-3)


def test_semi_hard_picks_the_closest_negative_farther_than_the_positive() -> None:
    """Hand-made similarities: anchor 0's positive at s = 0.5, negatives of the other view at 0.9 (harder), 0.4 and
    0.1 (easier). Schroff's semi-hard negative is the one at 0.4, not the mean over 0.4 and 0.1 (the old rule)."""
    from torchclr.loss.pairs import Pairs, other_view_negatives, semi_hard_negative

    similarity = torch.full((8, 8), -0.5)
    similarity[0, 4:] = torch.tensor([0.5, 0.9, 0.4, 0.1])  # row 0 (view 1, image 0) against view 2 of images 0-3
    similarity[0, 1:4] = 0.45  # view 1 of the other images: not negatives of row 0 (one view only)
    index = torch.arange(8)
    pairs = Pairs(similarity, index, ((index + 4) % 8).unsqueeze(1))  # [anchors, views - 1]: one positive each
    negatives = other_view_negatives(pairs)
    assert negatives[0].tolist() == [False] * 5 + [True] * 3
    assert semi_hard_negative(pairs, negatives)[0].item() == 6  # s = 0.4
    similarity[0, 6:] = 0.7  # every negative now harder than the positive: TF's rule takes the least similar one
    similarity[0, 5] = 0.95
    assert semi_hard_negative(pairs, negatives)[0].item() in (6, 7)
    z_margin = torch.relu(similarity - 0.5 + 0.5)[0, 6]  # the hinge the loss then takes for row 0
    assert z_margin.item() == pytest.approx(0.7)


@pytest.mark.parametrize("loss", [NTLogisticLoss(0.5, semi_hard=True), MarginTripletLoss(0.5, semi_hard=True)], ids=repr)
def test_semi_hard_gradcheck_float64(loss: torch.nn.Module) -> None:
    z = semi_hard_embeddings(4, seed=3).double().requires_grad_()
    assert torch.autograd.gradcheck(loss, (z,))


def test_semi_hard_refused_for_nt_xent() -> None:
    from torchclr.config import PretrainConfig

    with pytest.raises(UserError, match="nt_xent"):
        build_loss("nt_xent", 0.1, 0.5, semi_hard=True)
    with pytest.raises(UserError, match="--semi-hard applies to --loss nt_logistic and margin_triplet"):
        PretrainConfig(semi_hard=True).validate()
    PretrainConfig(semi_hard=True, loss="margin_triplet").validate()


def test_perfect_alignment_gives_low_nt_xent() -> None:
    """Identical views of orthogonal images: the positive dominates, as the paper's loss intends."""
    eye = torch.eye(4)
    assert NTXentLoss(0.05)(torch.cat([eye, eye])).item() < 1e-6


LOSSES = [NTXentLoss(0.1), NTLogisticLoss(0.1), MarginTripletLoss(0.5)]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
def test_gradcheck_float64(loss: torch.nn.Module) -> None:
    z = embeddings(3, dim=5, seed=7, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(loss, (z,))


def bf16_stress_inputs() -> dict[str, torch.Tensor]:
    base = embeddings(4, dim=32, seed=3)
    return {
        "random": base,
        "large_norm": base * 1e15,
        "near_identical": base[:1] + 1e-4 * base,
    }


@pytest.mark.parametrize("loss", [NTXentLoss(0.05), NTLogisticLoss(0.05), MarginTripletLoss(0.5)],
                         ids=lambda loss: type(loss).__name__)
@pytest.mark.parametrize("case", sorted(bf16_stress_inputs()))
def test_bf16_finite_at_low_temperature(loss: torch.nn.Module, case: str) -> None:
    z = bf16_stress_inputs()[case].bfloat16().requires_grad_()
    value = loss(z)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    assert z.grad is not None and z.grad.dtype == torch.bfloat16
    assert torch.isfinite(z.grad).all()


def test_similarities_stay_float32_under_autocast() -> None:
    z = embeddings(8)
    expected = NTXentLoss(0.05)(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = NTXentLoss(0.05)(z)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
@pytest.mark.parametrize("shape", [(5, 4), (0, 4), (6,), (2, 3, 4)])
def test_bad_shapes_raise(loss: torch.nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="embeddings"):
        loss(torch.randn(shape))


@pytest.mark.parametrize("name", ["nt_xent", "nt_logistic"])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(name: str, temperature: float) -> None:
    with pytest.raises(UserError, match=r"^temperature must be > 0"):
        build_loss(name, temperature=temperature, margin=0.5)


def test_bad_margin_raises() -> None:
    with pytest.raises(UserError, match=r"^margin must be >= 0, got -1"):
        build_loss("margin_triplet", temperature=0.1, margin=-1.0)


def test_build_loss_by_name() -> None:
    assert isinstance(build_loss("nt_xent", 0.2, 0.5), NTXentLoss)
    assert isinstance(build_loss("nt_logistic", 0.2, 0.5), NTLogisticLoss)
    triplet = build_loss("margin_triplet", 0.2, 0.7)
    assert isinstance(triplet, MarginTripletLoss) and triplet.margin == 0.7
    with pytest.raises(UserError, match=r"^loss must be one of .*'infonce'"):
        build_loss("infonce", 0.1, 0.5)
