"""LARS (You et al. 2017) as SimCLR trains with it: google-research/simclr's lars_optimizer.py, classic momentum."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor


def trust_ratio(weight_norm: Tensor, grad_norm: Tensor, trust_coefficient: float, eps: float) -> Tensor:
    """eta * |w| / (|g| + eps) where both norms are > 0, else 1 (elementwise, so it serves one tensor or a stack)."""
    adapted = trust_coefficient * weight_norm / (grad_norm + eps)
    return torch.where((weight_norm > 0) & (grad_norm > 0), adapted, torch.ones_like(adapted))


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling: each tensor's step is scaled by eta * |w| / |g|.

    Per parameter tensor w with gradient grad, as in google-research/simclr:
        g = grad + weight_decay * w
        r = trust_ratio(|w|, |g|)   (1 for groups with ``lars_exclude=True``: plain momentum SGD there)
        v = momentum * v + lr * r * g
        w = w - v
    ``eps`` only guards the division; the reference has none. Groups made by ``parameter_groups`` exclude biases
    and normalisation parameters from both weight decay and adaptation, as the paper does.
    ``foreach`` (default: on when every parameter is on a GPU) batches the per-tensor work into a few kernels.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        foreach: bool | None = None,
    ) -> None:
        for option, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                              ("trust_coefficient", trust_coefficient), ("eps", eps)):
            if value < 0:
                raise ValueError(f"LARS {option} must be >= 0, got {value}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_exclude=False, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            buffers = [self._momentum_buffer(p) for p in params]
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            update = _foreach_update if foreach else _single_tensor_update
            update(params, buffers, group)
        return loss

    def _momentum_buffer(self, param: Tensor) -> Tensor:
        """v starts at zero, so the first step is lr * r * g as in the reference."""
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def _single_tensor_update(params: list[Tensor], buffers: list[Tensor], group: dict[str, Any]) -> None:
    """The update one tensor at a time: fewest temporaries, simplest to follow."""
    for param, buffer in zip(params, buffers):
        grad = param.grad.add(param, alpha=group["weight_decay"])
        scale = group["lr"]
        if not group["lars_exclude"]:
            scale = scale * trust_ratio(param.norm(), grad.norm(), group["trust_coefficient"], group["eps"])
        buffer.mul_(group["momentum"]).add_(grad * scale)
        param.sub_(buffer)


def _foreach_update(params: list[Tensor], buffers: list[Tensor], group: dict[str, Any]) -> None:
    """The same update with multi-tensor kernels: one launch per op for the whole group instead of one per tensor."""
    grads = torch._foreach_add([p.grad for p in params], params, alpha=group["weight_decay"])
    if group["lars_exclude"]:
        torch._foreach_mul_(grads, group["lr"])
    else:
        ratios = trust_ratio(torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(grads)),
                             group["trust_coefficient"], group["eps"])
        torch._foreach_mul_(grads, list((group["lr"] * ratios).unbind()))
    torch._foreach_mul_(buffers, group["momentum"])
    torch._foreach_add_(buffers, grads)
    torch._foreach_sub_(params, buffers)
