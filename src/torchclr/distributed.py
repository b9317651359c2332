"""Rank queries and the gradient-carrying gather that lets every rank use the global batch as negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def _initialized() -> bool:
    """Single-process runs (no init_process_group) behave as a world of one."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if _initialized() else 0


def is_main_process() -> bool:
    """Only rank 0 writes logs and checkpoints, so the others do not race it."""
    return rank() == 0


def gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `z` from every rank along dim 0; return it and the row offset of this rank's rows.

    Every rank must pass a tensor of the same shape (all_gather requires it), so this rank's rows
    sit at ``offset = rank * z.shape[0]``. Without a process group (or in a world of one) it is the
    identity ``(z, 0)``.

    The backward sums, over all ranks, the gradients that reach this rank's slice of the gathered
    tensor. So if rank r minimises ``loss_r`` (the mean over its own rows of a loss computed against
    the gathered batch) and ``L = mean_r loss_r`` is the loss of one process holding the whole batch,
    the gradient reaching rank r's ``z`` is ``world_size * dL/dz_r``. DDP then averages parameter
    gradients over ranks, which divides by ``world_size`` again: the parameters get exactly
    ``dL/dtheta``, the full-batch gradient.
    """
    if world_size() == 1:
        return z, 0
    gathered = dist_fn.all_gather(z)
    return torch.cat(gathered, dim=0), rank() * z.shape[0]
