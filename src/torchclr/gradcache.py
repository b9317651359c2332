"""Gradient caching (Gao et al. 2021): the exact gradient of a contrastive loss over a big batch, with the activation
memory of one chunk of it.

Gradient accumulation is no substitute: each accumulated micro-batch sees only its own negatives. Here the loss
still sees every embedding of the batch; only the network runs chunk by chunk:

1. embed every chunk without autograd (no activations kept) and concatenate the embeddings z;
2. compute the loss on z and its gradient dL/dz (a small [2n, d] tensor);
3. run each chunk again with autograd and back-propagate its slice of dL/dz.

The parameters end with the gradient of the full batch, as long as a chunk's embeddings do not depend on the
other chunks. BatchNorm in training mode breaks that: it normalises each chunk by the chunk's own statistics
(as in Gao et al.), so the result is the exact gradient of a model with per-chunk BN. Running statistics are
updated once per chunk, not twice: the first pass puts them back. Layers that draw random numbers (dropout;
none in a ResNet) would draw differently in the two passes.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch import Tensor, nn


def chunk_layout(images: int, chunk_size: int) -> list[tuple[slice, slice]]:
    """Which images' view 1 and view 2 each chunk runs: (rows of `first`, rows of `second`) per chunk.

    Today chunk k holds both views of the same images. The one place to change so that BatchNorm in training
    mode stops seeing a positive pair inside one chunk's statistics (chunk k taking view 1 of one group of images
    and view 2 of another), since everything below follows these slices.
    """
    return [(slice(start, min(start + chunk_size, images)),) * 2 for start in range(0, images, chunk_size)]


def grad_cache_backward(
    model: nn.Module,
    embed: Callable[[Tensor], Tensor],
    loss_fn: Callable[[Tensor], Tensor],
    first: Tensor,
    second: Tensor,
    chunk_size: int,
    scale: Callable[[Tensor], Tensor] = lambda loss: loss,
) -> Tensor:
    """Accumulate into `.grad` the gradient of `loss_fn(z)` for the views `first`, `second` ([n, ...] each).

    `embed(images)` runs `model` on [2m, ...] images laid out as [view 1; view 2] of m images (autocast and memory
    format are its business) and returns z; `loss_fn` takes z of the whole batch as [view 1 of n; view 2 of n].
    `scale` is applied to the loss before its backward (a GradScaler's `scale`). Under DDP, only the last chunk's
    backward all-reduces the gradients (`model.no_sync()` for the others). Returns the loss, detached.
    """
    n = len(first)
    chunks = chunk_layout(n, chunk_size)
    saved_buffers = [buffer.clone() for buffer in model.buffers()]
    with torch.no_grad():
        embedded = [embed(torch.cat([first[rows1], second[rows2]])) for rows1, rows2 in chunks]
    for buffer, saved in zip(model.buffers(), saved_buffers):
        buffer.copy_(saved)

    z = embedded[0].new_empty(2 * n, embedded[0].shape[1])
    for (rows1, rows2), chunk_z in zip(chunks, embedded):
        view1, view2 = chunk_z.split([rows1.stop - rows1.start, rows2.stop - rows2.start])
        z[rows1], z[n + rows2.start : n + rows2.stop] = view1, view2
    z.requires_grad_()
    loss = loss_fn(z)
    scale(loss).backward()

    grad_view1, grad_view2 = z.grad[:n], z.grad[n:]
    for index, (rows1, rows2) in enumerate(chunks):
        all_reduce = index == len(chunks) - 1 or not hasattr(model, "no_sync")  # DDP: once, with the last chunk
        with nullcontext() if all_reduce else model.no_sync():
            chunk_z = embed(torch.cat([first[rows1], second[rows2]]))
            chunk_z.backward(torch.cat([grad_view1[rows1], grad_view2[rows2]]))
    return loss.detach()
