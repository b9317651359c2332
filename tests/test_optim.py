"""LARS against hand arithmetic, the parameter groups on a real ResNet, the schedule and the lr scaling."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torchvision
from torch import nn

from torchclr.errors import UserError
from torchclr.optim import LARS, build_optimizer, parameter_groups, scaled_lr, warmup_cosine, warmup_cosine_scheduler

LR, MOMENTUM, WEIGHT_DECAY, TRUST = 0.1, 0.9, 0.01, 0.5
GRADS = {  # (weight gradient, bias gradient) per step
    1: ([0.6, 0.8], [0.5, 0.5]),
    2: ([-0.3, 0.4], [0.1, -0.2]),
}


def norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def expected_after_two_steps() -> tuple[list[float], list[float]]:
    """google-research/simclr's LARS written out with Python floats: w = [3, 4] adapted, b = [1, -2] excluded."""
    w, b = [3.0, 4.0], [1.0, -2.0]
    v_w, v_b = [0.0, 0.0], [0.0, 0.0]
    for step in (1, 2):
        grad_w, grad_b = GRADS[step]
        g_w = [g + WEIGHT_DECAY * x for g, x in zip(grad_w, w)]
        ratio = TRUST * norm(w) / (norm(g_w) + 1e-8)
        v_w = [MOMENTUM * v + LR * ratio * g for v, g in zip(v_w, g_w)]
        w = [x - v for x, v in zip(w, v_w)]
        v_b = [MOMENTUM * v + LR * g for v, g in zip(v_b, grad_b)]  # excluded: no decay, no trust ratio
        b = [x - v for x, v in zip(b, v_b)]
    return w, b


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_matches_hand_arithmetic(foreach: bool) -> None:
    weight = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    bias = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = LARS(
        [{"params": [weight], "weight_decay": WEIGHT_DECAY}, {"params": [bias], "lars_exclude": True}],
        lr=LR, momentum=MOMENTUM, trust_coefficient=TRUST, foreach=foreach,
    )
    for step in (1, 2):
        grad_w, grad_b = GRADS[step]
        weight.grad = torch.tensor(grad_w, dtype=torch.float64)
        bias.grad = torch.tensor(grad_b, dtype=torch.float64)
        optimizer.step()
    expected_w, expected_b = expected_after_two_steps()
    torch.testing.assert_close(weight.detach(), torch.tensor(expected_w, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bias.detach(), torch.tensor(expected_b, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_trust_ratio_is_one_for_zero_norms(foreach: bool) -> None:
    """A zero weight (fresh zero-init layer) or a zero gradient must not freeze or blow up the step."""
    zero_weight = nn.Parameter(torch.zeros(3))
    still = nn.Parameter(torch.ones(2, 2))
    optimizer = LARS([zero_weight, still], lr=0.5, momentum=0.0, foreach=foreach)
    zero_weight.grad = torch.tensor([1.0, 2.0, 3.0])
    still.grad = torch.zeros(2, 2)
    optimizer.step()
    torch.testing.assert_close(zero_weight.detach(), torch.tensor([-0.5, -1.0, -1.5]))
    torch.testing.assert_close(still.detach(), torch.ones(2, 2))


def test_lars_foreach_matches_single_tensor_on_a_network() -> None:
    def train(foreach: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
        optimizer = LARS(parameter_groups(model, 1e-4), lr=1.0, foreach=foreach)
        inputs = torch.randn(8, 3, 6, 6)
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    for single, batched in zip(train(False), train(True)):
        torch.testing.assert_close(single, batched)


def test_lars_steps_a_compiled_model() -> None:
    """torch.compile wraps the module; the optimiser must still see (and move) the original parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    compiled = torch.compile(model, backend="eager")
    assert [[id(p) for p in g["params"]] for g in parameter_groups(compiled, 0.1)] == [
        [id(p) for p in g["params"]] for g in parameter_groups(model, 0.1)
    ]
    optimizer = build_optimizer(compiled, "lars", lr=1.0, weight_decay=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    compiled(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_parameter_groups_on_resnet18() -> None:
    model = torchvision.models.resnet18(weights=None)
    adapted, excluded = parameter_groups(model, weight_decay=1e-6)
    assert (adapted["weight_decay"], adapted["lars_exclude"]) == (1e-6, False)
    assert (excluded["weight_decay"], excluded["lars_exclude"]) == (0.0, True)

    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    conv_and_fc_weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {id(p) for p in excluded["params"]} == bn_params | {id(model.fc.bias)}
    assert {id(p) for p in adapted["params"]} == conv_and_fc_weights

    listed = [id(p) for group in (adapted, excluded) for p in group["params"]]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))


def test_parameter_groups_skip_frozen_and_shared() -> None:
    shared = nn.Linear(3, 3)
    norm, frozen = nn.GroupNorm(1, 3), nn.Linear(3, 2)
    frozen.requires_grad_(False)
    model = nn.Sequential(shared, norm, shared, frozen)
    adapted, excluded = parameter_groups(model, 0.5)
    assert [id(p) for p in adapted["params"]] == [id(shared.weight)]
    assert [id(p) for p in excluded["params"]] == [id(shared.bias), id(norm.weight), id(norm.bias)]


@pytest.mark.parametrize("name, kind", [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name: str, kind: type) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    optimizer = build_optimizer(model, name, lr=0.2, weight_decay=1e-4, momentum=0.8)
    assert isinstance(optimizer, kind)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [(0.2, 1e-4, 1), (0.2, 0.0, 3)]
    if name != "adamw":
        assert optimizer.param_groups[0]["momentum"] == 0.8


def test_unknown_optimizer_raises() -> None:
    with pytest.raises(UserError, match=r"^optimizer must be one of lars, sgd, adamw, got 'adam'"):
        build_optimizer(nn.Linear(2, 2), "adam", lr=0.1, weight_decay=0.0, momentum=0.9)


def test_warmup_cosine_key_steps() -> None:
    total, warmup = 100, 10
    assert warmup_cosine(0, total, warmup) == pytest.approx(0.1)  # first step already moves
    assert warmup_cosine(warmup - 1, total, warmup) == pytest.approx(1.0)  # warm-up ends at the peak
    assert warmup_cosine(warmup, total, warmup) == pytest.approx(1.0)  # cosine starts from the peak
    assert warmup_cosine(55, total, warmup) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(total, total, warmup) == pytest.approx(0.0)
    assert warmup_cosine(0, total, 0) == pytest.approx(1.0)
    decay = [warmup_cosine(step, total, warmup) for step in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_scheduler_drives_lr_and_saves_plain_state() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[4] == pytest.approx(2.0) and lrs[-1] < 0.2
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    restored = warmup_cosine_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0), 10, 4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize("total, warmup", [(0, 0), (10, 11)])
def test_scheduler_rejects_impossible_lengths(total: int, warmup: int) -> None:
    with pytest.raises(UserError):
        warmup_cosine_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), total, warmup)


def test_scaled_lr_examples() -> None:
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)  # 0.075 * 64
    assert scaled_lr(0.5, 512, "none") == 0.5
    with pytest.raises(UserError, match=r"^lr_scaling must be one of linear, sqrt, none, got 'log'"):
        scaled_lr(0.3, 256, "log")
