"""The paper's blocks at the package's top level, and keyword-only options on the wide signatures."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import torchclr
from torchclr.data.loaders import BatchedViews, PerImageViews
from torchclr.data.streaming import StreamedViews
from torchclr.embed import embed
from torchclr.neighbors import nearest, search


def test_the_paper_blocks_load_from_the_top_level_and_work_together() -> None:
    from torchclr import LARS, AugmentSpec, NTXentLoss, TwoViews, parameter_groups, projection_head, view_transform, warmup_cosine

    head = projection_head("mlp", 16, 8)
    optimizer = LARS(parameter_groups(head, 1e-6), lr=0.5)
    first, second = TwoViews(view_transform(AugmentSpec(image_size=16)))(torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    assert first.shape == second.shape == (3, 16, 16) and not torch.equal(first, second)
    z = head(torch.randn(8, 16))
    loss = NTXentLoss(temperature=0.5)(z)
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item()) and warmup_cosine(0, 10, 2) == 0.5 and warmup_cosine(10, 10, 2) == 0.0
    assert {"NTXentLoss", "LARS", "projection_head", "view_transform", "warmup_cosine"} <= set(torchclr.__all__)


@pytest.mark.parametrize(("function", "positional"), [
    (embed, ("checkpoint", "data", "out")), (nearest, ("bank", "queries", "k")), (search, ("embeddings", "k")),
    (BatchedViews, ("images", "spec")), (PerImageViews, ("images", "spec")), (StreamedViews, ("images", "spec")),
])
def test_wide_signatures_take_their_options_by_keyword_only(function: object, positional: tuple[str, ...]) -> None:
    parameters = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]  # type: ignore[arg-type]
    assert tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD) == positional
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters[len(positional):])
