"""The guarded step: a run whose loss or weights stop being finite ends, naming the step, before it saves them.

Reading a loss on the host every step would make the GPU wait on Python. Instead, after each update a few
device-side kernels fold `isfinite(loss)` and the largest |value| of every parameter and floating buffer
(BN running statistics included) into a device tensor holding the first bad step; the host reads it only at
log points and before every checkpoint. So no checkpoint can hold a non-finite weight, and nothing is
written after a bad step. `--skip-nonfinite-steps` instead checks loss and gradients before each update
(one host sync per step) and skips and counts the bad ones.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from torchclr import distributed
from torchclr.errors import UserError


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A device bool: no NaN or infinity in any of `tensors`. The inf-norm (max |x|) propagates NaN and cannot
    overflow, and `_foreach_norm` does it in a few fused kernels rather than one per tensor."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all()


class DivergedError(UserError):
    """The loss or the weights became non-finite; no checkpoint was written after the step named."""


class FiniteGuard:
    def __init__(self, model: nn.Module, step: int, skip_nonfinite: bool = False) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.watched = [t for t in chain(model.parameters(), model.buffers()) if t.is_floating_point()]
        self.step, self.skip_nonfinite, self.skipped = step, skip_nonfinite, 0
        device = self.watched[0].device if self.watched else torch.device("cpu")
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update_allowed(self, loss: torch.Tensor) -> bool:
        """True unless --skip-nonfinite-steps is on and the loss or a gradient is not finite (then counted).
        Without the option this returns at once: no sync, bad steps are caught by `observe`."""
        if not self.skip_nonfinite:
            return True
        grads = [p.grad for p in self.params if p.grad is not None]
        if bool((torch.isfinite(loss) & all_finite(grads)).item()):
            return True
        self.skipped += 1
        return False

    def observe(self, loss: torch.Tensor) -> None:
        """After an update: remember this step if it was the first with a non-finite loss or weight."""
        self.step += 1
        ok = all_finite(self.watched)
        if not self.skip_nonfinite:  # with skipping, a bad loss was already skipped and counted
            ok = ok & torch.isfinite(loss.detach())
        seen = self.first_bad >= 0
        self.first_bad = torch.where(ok | seen, self.first_bad, self.first_bad.new_full((), self.step))

    def check(self) -> None:
        """Raise `DivergedError` naming the first bad step on any process (a host sync: log points and saves only)."""
        bad = [step for step in distributed.all_gather_objects(int(self.first_bad.item())) if step >= 0]
        if bad:
            what = "weights" if self.skip_nonfinite else "loss or weights"
            raise DivergedError(f"training diverged: the {what} became NaN or infinite at step {min(bad)}; nothing "
                                "was saved after it (lower --lr, raise --temperature, or --resume from the last checkpoint)")
