"""Learning-rate scaling with batch size (the square-root rule: appendix B.1) and the warm-up + cosine schedule of
SimCLR (paper, section 2.3).

The schedule is a pure function of the step: a training loop sets `peak * warmup_cosine(step, ...)` on the
optimiser before each step (`set_learning_rate`), as DINO and nanoGPT do, so a run whose length changes (a time
budget) only passes another total.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from torchclr.errors import UserError

LR_SCALING_RULES = ("linear", "sqrt", "none")


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The paper's learning rate for a batch: 'linear' base * B / 256 (0.3 -> 4.8 at 4096), 'sqrt' base * sqrt(B)."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise UserError(f"lr_scaling must be one of {', '.join(LR_SCALING_RULES)}, got {rule!r}")


def warmup_cosine(step: int, total_steps: int | None, warmup_steps: int) -> float:
    """Multiplier of the peak lr at `step`: (step + 1) / warmup_steps during warm-up, then cosine decay to 0.

    Warm-up counts from step + 1 so that the very first step already moves (lr / warmup_steps, not 0) and the
    last warm-up step reaches the peak; the cosine then runs from 1 at the end of warm-up to 0 at total_steps.
    `total_steps` None (a time budget not yet planned): the peak after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None:
        return 1.0
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The same lr for every parameter group (LARS's excluded group included)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR over `warmup_cosine`, for the evaluation protocols' fixed-length loops; a partial of a
    module function keeps its state dict plain data."""
    if total_steps <= 0:
        raise UserError(f"the run has no optimisation steps ({total_steps}): check epochs and that the data fill a batch")
    if not 0 <= warmup_steps <= total_steps:
        raise UserError(f"warmup_epochs give {warmup_steps} warm-up steps, more than the run's {total_steps} steps")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, total_steps=total_steps, warmup_steps=warmup_steps)
    )
