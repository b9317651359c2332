"""One SimCLR optimisation step: both views through encoder and head as one batch, the contrastive loss, the update.

Used by the training loop, the memory plan (which measures it) and the benchmarks, so all three time and size the
same step. The learning rate is set by the caller before the step (`torchclr.optim.set_learning_rate`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.gradcache import grad_cache_backward
from torchclr.guard import FiniteGuard


@dataclass(kw_only=True)
class StepContext:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    grad_cache_chunk: int | None = None
    guard: FiniteGuard | None = None  # watches loss and weights for NaN/inf (see torchclr.guard)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """z for a batch of [view 1; view 2] images, under the run's autocast and memory format."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.model(images)[1]


def training_step(ctx: StepContext, *views: torch.Tensor) -> torch.Tensor:
    """One step on a batch's views, view-major: a pair of views [N, ...] each, or multi-crop groups [count x N, ...]
    each (see `torchclr.transforms.multicrop`). The views of one size go through the network as one batch (BN sees
    2N for a pair), one forward per size as SwAV does, and z is their concatenation; or, with gradient caching (two
    views), chunk by chunk with the same gradient (see `torchclr.gradcache`)."""
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.grad_cache_chunk and ctx.grad_cache_chunk < len(views[0]):
        if len(views) != 2 or views[0].shape != views[1].shape:
            raise UserError("gradient caching runs two views per image; use --grad-cache-chunk off with --views")
        first, second = views
        loss = grad_cache_backward(ctx.model, ctx.embed, ctx.loss_fn, first, second, ctx.grad_cache_chunk, ctx.scaler.scale)
    else:
        same_size = (list(group) for _, group in itertools.groupby(views, key=lambda view: view.shape[-2:]))
        z = torch.cat([ctx.embed(group[0] if len(group) == 1 else torch.cat(group)) for group in same_size])
        with ctx.autocast():
            loss = ctx.loss_fn(z)
        ctx.scaler.scale(loss).backward()
    if ctx.guard is not None and ctx.guard.skip_nonfinite and ctx.scaler.is_enabled():
        ctx.scaler.unscale_(ctx.optimizer)  # the guard judges the true gradients, not the fp16-scaled ones
    if ctx.guard is None or ctx.guard.update_allowed(loss):
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    if ctx.guard is not None:
        ctx.guard.observe(loss)
    return loss.detach()
