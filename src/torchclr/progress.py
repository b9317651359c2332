"""An epoch's running loss, its progress bar and the points at which the loop logs (a tenth of an epoch).

The loss stays on the device between log points: summing it there keeps the step free of host syncs.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from torchclr import distributed


class EpochMeter:
    """Counts an epoch's steps from `start_step` on and says when a log point is reached."""

    def __init__(self, *, epoch: int, steps_per_epoch: int, start_step: int, images_per_step: int, views_per_image: int,
                 device: torch.device, show: bool) -> None:
        self.epoch, self.steps_per_epoch, self.step_in_epoch = epoch, steps_per_epoch, start_step
        self.images_per_step, self.views_per_image = images_per_step, views_per_image
        self.log_every = max(1, steps_per_epoch // 10)
        self.total, self.finite = torch.zeros((), device=device), torch.zeros((), device=device)
        self.count, self.started = 0, time.perf_counter()
        self.bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}", disable=not show,
                        leave=False, dynamic_ncols=True)

    def update(self, loss: torch.Tensor) -> bool:
        """Count a step's loss (a step skipped by --skip-nonfinite-steps has none); True at a log point."""
        self.total += torch.where(loss.isfinite(), loss, 0.0)
        self.finite += loss.isfinite()
        self.count += 1
        self.step_in_epoch += 1
        self.bar.update(1)
        return self.at_log_point()

    def at_log_point(self) -> bool:
        return self.step_in_epoch % self.log_every == 0 or self.step_in_epoch == self.steps_per_epoch

    @property
    def complete(self) -> bool:
        """Whether every step of the epoch ran (a time budget or a signal can end one early)."""
        return self.step_in_epoch == self.steps_per_epoch

    def images_per_second(self) -> float:
        return self.count * self.images_per_step * distributed.world_size() / (time.perf_counter() - self.started)

    def show(self, loss: float, lr: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", img_s=f"{self.images_per_second():.0f}")

    def close(self) -> float:
        """The epoch's mean loss over all processes and finite steps (a collective)."""
        self.bar.close()
        return distributed.mean_over_ranks(self.total / self.finite.clamp(min=1)).item()
