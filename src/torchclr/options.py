"""Range checks for the numeric options of the commands after training (evaluate, embed, neighbors, report, ablate),
made before any work, as `config._coerce` makes them for pretrain's.

NaN passes every `<= 0` test and infinity every `> 0` test, so a learning rate of `nan` used to give chance
accuracy with exit code 0. Each option is checked here once: finite, and within its range, in one line naming it.
"""

from __future__ import annotations

import math

from torchclr.errors import UserError

MAX_SEED = 2**63 - 1  # what torch.manual_seed and numpy accept


def check_number(option: str, value: float | int | None, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """Refuse `value` unless it is finite and low <= value <= high (low < value with `low_open`); None passes
    (the option's default is chosen later)."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {value}")
    below = value <= low if low is not None and low_open else low is not None and value < low
    if below or (high is not None and value > high):
        lower = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        upper = "" if high is None else f"<= {high:g}"
        raise UserError(f"{option} must be {' and '.join(p for p in (lower, upper) if p)}, got {value}")


def check_seed(option: str, value: int) -> None:
    check_number(option, value, low=0, high=MAX_SEED)
