"""Two gloo processes on CPU must reproduce the single-process loss and, after DDP's averaging, its gradient,
for two views per image and for multi-crop's more (every view of an image a positive of every other)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist

from torchclr import distributed
from torchclr.loss import build_loss

WORLD = 2
IMAGES_PER_RANK = 3
LOSS_NAMES = ("nt_xent", "nt_logistic", "margin_triplet", "nt_logistic+semi_hard", "margin_triplet+semi_hard",
              "nt_xent/4", "nt_xent/4+large", "nt_logistic/3", "margin_triplet/3")
TIMEOUT_S = 60


def views_of(name: str) -> int:
    """The views per image of a case: `loss/V` has V, the others two."""
    return int(name.partition("+")[0].partition("/")[2] or 2)


def full_batch(views: int = 2) -> torch.Tensor:
    """[view 1 of rank 0's and rank 1's images; view 2 of the same; ...], as one process would hold them."""
    generator = torch.Generator().manual_seed(views)
    return torch.randn(views * WORLD * IMAGES_PER_RANK, 8, generator=generator, dtype=torch.float64)


def local_rows(rank: int, views: int = 2) -> torch.Tensor:
    """Indices in full_batch(views) of rank's rows, in its own view-major layout."""
    images = torch.arange(rank * IMAGES_PER_RANK, (rank + 1) * IMAGES_PER_RANK)
    return torch.cat([images + view * WORLD * IMAGES_PER_RANK for view in range(views)])


def make_loss(name: str) -> torch.nn.Module:
    """`name`, `name+semi_hard` for its semi-hard variant (mined over the negatives of both ranks), `name/V` with V
    views per image, `+large` with the first two views as the only anchors."""
    loss_views, _, option = name.partition("+")
    loss = loss_views.partition("/")[0]
    return build_loss(loss, temperature=0.2, margin=0.5, semi_hard=option == "semi_hard", views=views_of(name),
                      anchor_views=2 if option == "large" else None)


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30)
    )
    try:
        results = {"world_size": distributed.world_size(), "rank": distributed.rank(), "main": distributed.is_main_process()}
        for name in LOSS_NAMES:
            z = full_batch(views_of(name))[local_rows(rank, views_of(name))].requires_grad_()
            loss = make_loss(name)(z)
            loss.backward()
            results[name] = (loss.detach(), z.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory, spawn_ranks: Callable[..., None]) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    spawn_ranks(worker, (str(out_dir),), WORLD, TIMEOUT_S)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
def test_rank_queries(rank_results: list[dict]) -> None:
    assert [(r["world_size"], r["rank"], r["main"]) for r in rank_results] == [(2, 0, True), (2, 1, False)]


def test_rank_queries_without_process_group() -> None:
    z = torch.randn(4, 3)
    gathered, offset = distributed.gather_with_grad(z)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (1, 0, True)
    assert gathered is z and offset == 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_two_ranks_match_one_process(rank_results: list[dict], name: str) -> None:
    z = full_batch(views_of(name)).requires_grad_()
    single = make_loss(name)(z)
    single.backward()
    rank_losses = torch.stack([r[name][0] for r in rank_results])
    torch.testing.assert_close(rank_losses.mean(), single.detach(), rtol=0, atol=1e-5)
    for rank, result in enumerate(rank_results):
        # Each rank's z gets world_size x its slice of the full-batch gradient; DDP's mean over ranks undoes the factor.
        torch.testing.assert_close(result[name][1], WORLD * z.grad[local_rows(rank, views_of(name))], rtol=1e-6, atol=1e-9)
