"""The fast path's training step never makes the device wait for the host.

A synchronising call (`nonzero`, `.item()`, `.tolist()`, a tensor built on the host and copied over) stalls a GPU
for the round trip, every step, and rules out CUDA graphs. The CPU test traces every aten op of a step (the next
batch of BatchedViews, augmentation included, then forward, loss, backward and the optimiser) and fails on the
ops that synchronise on a GPU; where CUDA is present, the same step runs under torch.cuda's sync debug mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from torchclr.data.loaders import BatchedViews
from torchclr.data.sources import open_images
from torchclr.loss import NTXentLoss
from torchclr.models import build_simclr
from torchclr.optim import build_optimizer
from torchclr.step import StepContext, training_step
from torchclr.transforms import AugmentSpec

SYNCHRONISING = ("nonzero", "_local_scalar_dense", "masked_select", "unique", "_unique", "_unique2",
                 "unique_consecutive", "unique_dim", "equal", "is_nonzero")
HOST_BUILT = ("lift_fresh", "lift_fresh_copy")  # what torch.tensor(data) and friends call


class SyncCalls(TorchDispatchMode):
    """Names of the ops that would make a GPU wait for the host (or copy host-built data to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops += 1
        name = func.overloadpacket.__name__
        if name in SYNCHRONISING or name in HOST_BUILT:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of several shapes, so that the padded tensor carries sizes and every part of the crop path runs."""
    root = tmp_path_factory.mktemp("mixed")
    for i, (width, height) in enumerate([(40, 30), (24, 36), (32, 32), (50, 20)] * 4):
        Image.new("RGB", (width, height), (i * 13 % 256, 90, 200)).save(root / f"{i:02d}.png")
    return root


def step_parts(folder: Path, device: torch.device) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], StepContext]:
    torch.manual_seed(0)
    spec = AugmentSpec(image_size=16, blur_p=0.5, solarize_p=0.2)  # every op of the view family on
    views = BatchedViews(open_images(str(folder), "train"), spec, batch_size=8, device=device, seed=0, stored_size=24)
    assert views.sizes is not None
    views.augment.sync_free = True  # what a GPU runs by default, traced here on the CPU
    model = build_simclr("resnet18", 16, None, "mlp", 2, 16).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, "lars", lr=0.1, weight_decay=1e-6, momentum=0.9)
    ctx = StepContext(model=model, loss_fn=NTXentLoss(0.5), optimizer=optimizer, scaler=torch.amp.GradScaler(device.type, enabled=False),
                      device=device, dtype=torch.bfloat16, channels_last=True)
    return views.epoch(0), ctx


@pytest.mark.slow
def test_a_fast_path_step_makes_no_synchronising_call(mixed_folder: Path) -> None:
    batches, ctx = step_parts(mixed_folder, torch.device("cpu"))
    training_step(ctx, *next(batches))  # the epoch's start (its one copy of the order) is outside the step
    with SyncCalls() as calls:
        loss = training_step(ctx, *next(batches))
    assert calls.ops > 500  # the trace saw the whole step: augmentation, forward, backward, optimiser
    assert calls.found == []
    assert torch.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_path_step_under_sync_debug_mode(mixed_folder: Path) -> None:
    device = torch.device("cuda")
    batches, ctx = step_parts(mixed_folder, device)
    training_step(ctx, *next(batches))  # cuDNN's first-call set-up and the epoch's start are outside
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = training_step(ctx, *next(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
