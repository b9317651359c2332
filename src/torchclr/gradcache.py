"""Gradient caching (Gao et al. 2021): the exact gradient of a contrastive loss over a big batch, with the activation
memory of one chunk of it.

Gradient accumulation is no substitute: each accumulated micro-batch sees only its own negatives. Here the loss
still sees every embedding of the batch; only the network runs chunk by chunk:

1. embed every chunk without autograd (no activations kept) and concatenate the embeddings z;
2. compute the loss on z and its gradient dL/dz (a small [2n, d] tensor);
3. run each chunk again with autograd and back-propagate its slice of dL/dz.

Which gradient this is. Without BatchNorm in training mode (or with BN in eval mode) a chunk's embeddings do not
depend on the other chunks, and the parameters end with the exact gradient of the whole batch, as the unchunked
step. BatchNorm in training mode normalises each chunk by the chunk's own statistics, so the result is the exact
gradient of a model whose BN statistics are those of each chunk (as in Gao et al.). `chunk_layout` lays the chunks
out so that no chunk holds both views of one image: chunk k runs view 1 of group k and view 2 of group k + 1
(mod the number of groups), so a positive pair is never normalised by the same statistics, the leak that the
paper's global BN exists to prevent. A batch that fits in one chunk runs unchunked, with global BN. Running
statistics are updated once per chunk, not twice: the first pass puts them back. Layers that draw random numbers
(dropout; none in a ResNet) would draw differently in the two passes.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch import Tensor, nn


def chunk_layout(images: int, chunk_size: int) -> list[tuple[slice, slice]]:
    """Which images' view 1 and view 2 each chunk runs: (rows of `first`, rows of `second`) per chunk.

    The images are cut into groups of `chunk_size` (the last may be shorter); chunk k takes view 1 of group k and
    view 2 of group k + 1 (the last chunk: of group 0), so no chunk holds both views of an image and BatchNorm in
    training mode never computes a positive pair's statistics together. A chunk holds at most 2 x `chunk_size`
    views, as before. One group (`chunk_size` >= `images`) is the whole batch in one chunk: the unchunked step.
    """
    groups = [slice(start, min(start + chunk_size, images)) for start in range(0, images, chunk_size)]
    return [(group, groups[(index + 1) % len(groups)]) for index, group in enumerate(groups)]


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

    `embed(images)` runs `model` on [m1 + m2, ...] images laid out as [view 1 of m1 images; view 2 of m2 others]
    (see `chunk_layout`; autocast and memory format are its business) and returns z; `loss_fn` takes z of the
    whole batch as [view 1 of n; view 2 of n].
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
