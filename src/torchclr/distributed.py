"""Multi-process training on torch.distributed: joining the group torchrun set up, rank queries, global BatchNorm,
the gradient-carrying gather that lets every rank use the global batch as negatives, and small collectives."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchclr.errors import UserError


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


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK): the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _launched_world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE), known before the group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT) for the block.

    A plain `python` or `torchclr` run (no WORLD_SIZE, or 1) stays single-process. NCCL drives GPUs, gloo the CPU.
    A collective that fails because a peer died, or waits longer than `timeout_s` for a stalled one, ends this
    process with a one-line UserError naming its rank instead of a traceback or a hang.
    """
    world = _launched_world_size()
    if world == 1:
        yield
        return
    me = int(os.environ.get("RANK", "0"))
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
        yield
    except (dist.DistError, RuntimeError) as err:
        if not _is_communication_failure(err):
            raise
        raise UserError(f"process {me} of {world} lost contact with the others ({_reason(err)}): another process "
                        f"failed (see its error) or stalled longer than --dist-timeout {timeout_s:g} s") from None
    # Only a clean finish leaves the group: tearing down a broken NCCL communicator can block, and exit frees it anyway.
    dist.destroy_process_group()


def _is_communication_failure(err: BaseException) -> bool:
    """gloo reports a dead or silent peer as a plain RuntimeError; its messages name the library or, from a
    collective inside DDP's forward, only the closed connection ("Application timeout caused pair closure")."""
    return isinstance(err, dist.DistError) or any(word in str(err) for word in ("gloo", "NCCL", "pair closure"))


def _reason(err: BaseException) -> str:
    """The first sentence of a backend's message, without its source-file prefix."""
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line).split(". ")[0].rstrip(".")


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The average of a (detached) tensor over all processes, for logging; gloo has no AVG, hence SUM / world."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def barrier() -> None:
    """Hold every process here until all arrive (e.g. while rank 0 writes a checkpoint)."""
    if world_size() > 1:
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """`value` from every rank, in rank order (small picklable things such as RNG states)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


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
    return _AllGather.apply(z), rank() * z.shape[0]


class _AllGather(torch.autograd.Function):
    """Rows of every rank, concatenated; the backward sums all ranks' gradients and keeps this rank's rows.

    (torch.distributed.nn's differentiable collectives do the same but are deprecated.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        rows = total.shape[0] // world_size()
        return total[rank() * rows : (rank() + 1) * rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the same sum of the gradients (each rank's input feeds every rank's output)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, from autograd-aware all-reduces.

    torch.nn.SyncBatchNorm does the same with fused GPU kernels but refuses CPU tensors (and DDP refuses it on
    the CPU), so CPU (gloo) runs use this. Outside training, or without a group, it is an ordinary BatchNorm.
    The variance is taken around the global mean (two passes), which float32 keeps accurate.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {input.dim()}-d")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = (1, -1) + (1,) * (input.dim() - 2)
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        local_count = x.new_full((1,), input.numel() // input.shape[1])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """As nn.BatchNorm does: an exponential average, or the cumulative one when momentum is None."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


Module = TypeVar("Module", bound=nn.Module)


def global_batchnorm(module: Module, device: torch.device) -> Module:
    """Replace every BatchNorm in `module` by one that normalises over the batches of all processes (global BN).

    GPUs get torch.nn.SyncBatchNorm; the CPU, which it does not support, gets AllReduceBatchNorm. Parameters and
    running statistics are taken over as they are (same tensors, same state-dict keys), so checkpoints load into
    a plain model.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm):
        replacement = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        if module.affine:
            replacement.weight, replacement.bias = module.weight, module.bias
        replacement.running_mean, replacement.running_var = module.running_mean, module.running_var
        replacement.num_batches_tracked = module.num_batches_tracked
        return replacement.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, global_batchnorm(child, device))
    return module
