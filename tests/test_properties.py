"""Property-based checks (hypothesis) of the loss and the augmentations, on inputs no hand-written case covers."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from torchclr.loss import NTXentLoss
from torchclr.transforms import AugmentSpec, BatchAugment, view_transform

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _embeddings(bound: float | None = None) -> st.SearchStrategy[np.ndarray]:
    """[2n, d] float32 embeddings; without `bound`, any finite float32 (up to 3.4e38)."""
    shapes = st.tuples(st.integers(1, 6).map(lambda n: 2 * n), st.integers(1, 8))
    elements = st.floats(-bound if bound else None, bound, allow_nan=False, allow_infinity=False, width=32)
    return shapes.flatmap(lambda shape: arrays(np.float32, shape, elements=elements))


@FAST
@given(_embeddings(), st.sampled_from([0.05, 0.5, 1.0]))
def test_ntxent_is_finite_for_any_finite_embeddings(z: np.ndarray, temperature: float) -> None:
    loss = NTXentLoss(temperature)(torch.from_numpy(z))
    assert torch.isfinite(loss)


@FAST
@given(_embeddings(100.0), st.floats(1e-2, 1e2))
def test_ntxent_ignores_the_scale_of_z_and_the_order_of_the_views(z: np.ndarray, scale: float) -> None:
    z64 = torch.from_numpy(z).double()
    assume(bool((z64.norm(dim=1) > 1e-3).all()))  # cosine similarity of a (near-)zero row is not defined
    loss = NTXentLoss(0.5)
    reference = loss(z64)
    first, second = z64.chunk(2)
    assert torch.allclose(loss(z64 * scale), reference, rtol=1e-9, atol=1e-9)
    assert torch.allclose(loss(torch.cat([second, first])), reference, rtol=1e-9, atol=1e-9)


_images = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda s: arrays(np.uint8, (s[0], 3, s[1], s[2]), elements=st.integers(0, 255)))


@FAST
@given(_images, st.sampled_from([8, 13]), st.booleans(), st.integers(0, 2**31))
def test_batched_views_keep_shape_dtype_and_range_for_any_image_size(images: np.ndarray, size: int, crop: bool, seed: int) -> None:
    spec = AugmentSpec(image_size=size, crop=crop, blur_p=0.5, solarize_p=0.5)
    first, second = BatchAugment(spec).two_views(torch.from_numpy(images), torch.Generator().manual_seed(seed))
    for view in (first, second):
        assert view.shape == (len(images), 3, size, size) and view.dtype == torch.float32
        assert torch.isfinite(view).all() and view.min() >= 0 and view.max() <= 1


@FAST
@given(_images, st.integers(0, 2**31))
def test_per_image_views_keep_shape_dtype_and_range_for_any_image_size(images: np.ndarray, seed: int) -> None:
    torch.manual_seed(seed)
    view = view_transform(AugmentSpec(image_size=8, blur_p=0.5, solarize_p=0.5))(torch.from_numpy(images[0]))
    assert view.shape == (3, 8, 8) and view.dtype == torch.float32
    assert torch.isfinite(view).all() and view.min() >= 0 and view.max() <= 1

