"""Gradient caching gives the gradient of the whole batch while running the network chunk by chunk."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

from torchclr.config import PretrainConfig
from torchclr.errors import UserError
from torchclr.evaluate.features import extract_features
from torchclr.gradcache import chunk_layout, grad_cache_backward
from torchclr.loss import LOSS_NAMES, build_loss

IMAGES, CHUNK = 8, 2  # 4 chunks of 2 images (4 views) each


def tiny_net() -> nn.Module:
    """Conv and linear layers with BatchNorm in both, like a ResNet trunk and its projection head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6),
    )


def views(images: int = IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(images, 3, 6, 6, generator=generator), torch.rand(images, 3, 6, 6, generator=generator)


def gradients(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def full_batch_gradients(model: nn.Module, loss_fn: nn.Module, first: torch.Tensor, second: torch.Tensor,
                         embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    model.zero_grad()
    loss_fn((embed or model)(torch.cat([first, second]))).backward()
    return gradients(model)


def cached_gradients(model: nn.Module, loss_fn: nn.Module, first: torch.Tensor, second: torch.Tensor,
                     embed: Callable[[torch.Tensor], torch.Tensor] | None = None, chunk: int = CHUNK,
                     **kwargs: Any) -> list[torch.Tensor]:
    model.zero_grad()
    grad_cache_backward(model, embed or model, loss_fn, first, second, chunk, **kwargs)
    return gradients(model)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_chunks_give_the_full_batch_gradient(name: str) -> None:
    """BN in eval mode (or no BN): a chunk's embeddings do not depend on the other chunks, so the maths is the same."""
    model, loss_fn = tiny_net().eval(), build_loss(name, temperature=0.2, margin=0.5)
    for images, chunk in ((IMAGES, CHUNK), (7, 3)):  # equal chunks, and a short last one
        first, second = views(images)
        expected = full_batch_gradients(model, loss_fn, first, second)
        for got, want in zip(cached_gradients(model, loss_fn, first, second, chunk=chunk), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("images, chunk", [(IMAGES, CHUNK), (7, 3), (5, 2), (4, 3)])
def test_train_mode_batchnorm_normalises_chunks_that_never_hold_a_positive_pair(images: int, chunk: int) -> None:
    """The exact gradient of a model whose BN sees, in chunk k, view 1 of images group k and view 2 of group k + 1
    (mod the groups), written out here by hand; running statistics as if each chunk had been seen once."""
    loss_fn = build_loss("nt_xent", temperature=0.2, margin=0.5)
    first, second = views(images)
    groups = [list(range(start, min(start + chunk, images))) for start in range(0, images, chunk)]
    reference = tiny_net()
    z1, z2 = [torch.empty(0)] * images, [torch.empty(0)] * images
    for k, group in enumerate(groups):
        partner = groups[(k + 1) % len(groups)]
        out = reference(torch.cat([first[group], second[partner]]))
        for row, i in enumerate(group):
            z1[i] = out[row]
        for row, i in enumerate(partner):
            z2[i] = out[len(group) + row]
    loss_fn(torch.stack(z1 + z2)).backward()

    model = tiny_net()
    got = cached_gradients(model, loss_fn, first, second, chunk=chunk)
    for g, want in zip(got, gradients(reference), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)
    for buffer, want in zip(model.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(buffer, want, rtol=1e-6, atol=1e-7)
    assert model[1].num_batches_tracked.item() == len(groups)


@pytest.mark.parametrize("images", [1, 2, 3, 7, 16, 33, 100])
def test_no_chunk_holds_both_views_of_an_image(images: int) -> None:
    """Every view runs exactly once, chunks hold at most 2 x chunk views, and an image's two views share a chunk only
    when the whole batch is one chunk (the unchunked step, global BN)."""
    for chunk in range(1, images + 2):
        layout = chunk_layout(images, chunk)
        rows1 = [i for first_rows, _ in layout for i in range(images)[first_rows]]
        rows2 = [i for _, second_rows in layout for i in range(images)[second_rows]]
        assert sorted(rows1) == sorted(rows2) == list(range(images))
        assert all(len(range(images)[a]) + len(range(images)[b]) <= 2 * chunk for a, b in layout)
        if chunk >= images:
            assert layout == [(slice(0, images), slice(0, images))]
        else:
            assert all(not set(range(images)[a]) & set(range(images)[b]) for a, b in layout)


def test_composes_with_grad_scaler_and_autocast() -> None:
    """The scaled loss's gradient flows through the cached embeddings; bf16 embeddings take bf16 gradients."""
    model, loss_fn = tiny_net().eval(), build_loss("nt_xent", temperature=0.2, margin=0.5)
    first, second = views()
    plain = cached_gradients(model, loss_fn, first, second)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for got, want in zip(cached_gradients(model, loss_fn, first, second, scale=scaler.scale), plain, strict=True):
        torch.testing.assert_close(got, 1024 * want, rtol=1e-5, atol=1e-5)

    def bf16_model(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(images)

    # bf16 rounds chunks and the whole batch differently: only roughly equal, but it must run and agree.
    expected = full_batch_gradients(model, loss_fn, first, second, bf16_model)
    for got, want in zip(cached_gradients(model, loss_fn, first, second, bf16_model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0.1 * want.abs().max().item())


@pytest.mark.slow
def test_the_automatic_chunk_gives_the_unchunked_loss_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """--grad-cache-chunk auto on a batch that does not fit: the plan turns caching on, and the step it then runs
    (BN in eval mode) has the loss, gradients and updated weights of the unchunked step."""
    from torchclr import memory
    from torchclr.models import build_simclr
    from torchclr.optim import build_optimizer
    from torchclr.step import StepContext, training_step

    def context() -> StepContext:
        torch.manual_seed(0)
        model = build_simclr("resnet18", 8, True, "mlp", 2, 16).eval()
        optimizer = build_optimizer(model, "lars", lr=0.5, weight_decay=1e-6, momentum=0.9)
        return StepContext(model=model, loss_fn=build_loss("nt_xent", 0.5, 1.0), optimizer=optimizer,
                           scaler=torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), dtype=None,
                           channels_last=False)

    # A step of n images needs 100 MiB + 10 MiB x n; 170 MiB of plan leave room for 7 images, so 16 run as 3 chunks of 6.
    mib = 2**20
    monkeypatch.setattr(memory, "measure_network", lambda *_: memory.LinearCost(100 * mib, 10.0 * mib))
    monkeypatch.setattr(memory, "free_memory", lambda device: int(170 * mib / memory.HEADROOM) + 1)
    monkeypatch.setattr(memory, "MIN_CHUNK", 2)
    automatic, plain = context(), context()
    plan = memory.plan_pretraining(automatic, training_step, automatic.model, 16, 8, "auto", infer=extract_features)
    assert plan.chunk == 6 and "gradient caching in chunks of 6" in plan.describe()
    automatic.grad_cache_chunk = plan.chunk

    generator = torch.Generator().manual_seed(2)
    first, second = torch.rand(2, 16, 3, 8, 8, generator=generator)
    loss_chunked, loss_plain = training_step(automatic, first, second), training_step(plain, first, second)
    torch.testing.assert_close(loss_chunked, loss_plain, rtol=1e-6, atol=1e-6)
    for got, want in zip(automatic.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5"])
def test_grad_cache_chunk_is_auto_off_or_a_positive_count(value: str) -> None:
    with pytest.raises(UserError, match="--grad-cache-chunk"):
        PretrainConfig(grad_cache_chunk=value).validate()
    assert PretrainConfig().grad_cache_request() == "auto"
    assert PretrainConfig(grad_cache_chunk="128").grad_cache_request() == 128
    assert PretrainConfig(grad_cache_chunk=None).grad_cache_request() == "off"  # configs saved before 'auto' existed
