"""The fast path's compute settings stay in force: a regression here costs speed, not correctness, so nothing else
would notice. (The speed itself is measured by benchmarks/throughput.py, not by tests.)"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torchclr.loss import NTXentLoss
from torchclr.models import build_simclr
from torchclr.optim import build_optimizer
from torchclr.step import StepContext, training_step


class OpLog(TorchDispatchMode):
    """Every aten op with its tensor inputs and outputs, as it reaches the kernels (after autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list[torch.Tensor], list[torch.Tensor]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        outputs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        self.calls.append((func, inputs, outputs))
        return out


def _new_tensors_of_shape(log: OpLog, shape: tuple[int, ...]) -> list[str]:
    """Ops that allocated a tensor of `shape` (in-place ops and views share an input's storage and do not count)."""
    names = []
    for func, inputs, outputs in log.calls:
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        if any(o.shape == shape and o.untyped_storage().data_ptr() not in storages for o in outputs):
            names.append(func.__name__)
    return names


def test_nt_xent_makes_one_similarity_matmul_and_no_avoidable_2n_by_2n_copy() -> None:
    rows = 16
    z = torch.randn(rows, 8, requires_grad=True)
    with OpLog() as forward:
        loss = NTXentLoss(0.5)(z)
    assert _new_tensors_of_shape(forward, (rows, rows)) == ["mm.default", "_log_softmax.default"]
    with OpLog() as backward:
        loss.backward()
    assert not [func for func, _, outputs in backward.calls if "mm" in func.__name__ and outputs[0].shape == (rows, rows)]


def test_training_step_runs_the_convolutions_in_bf16_and_channels_last() -> None:
    torch.manual_seed(0)
    model = build_simclr("resnet18", 32, False, "mlp", 2, 16).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, "lars", lr=0.1, weight_decay=1e-6, momentum=0.9)
    ctx = StepContext(model=model, loss_fn=NTXentLoss(0.5), optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
                      device=torch.device("cpu"), dtype=torch.bfloat16, channels_last=True)
    first, second = torch.rand(2, 4, 3, 32, 32)
    with OpLog() as log:
        loss = training_step(ctx, first, second)
    assert torch.isfinite(loss)
    forward = [inputs for func, inputs, _ in log.calls if func.__name__ == "convolution.default"]
    backward = [inputs for func, inputs, _ in log.calls if func.__name__ == "convolution_backward.default"]
    assert len(forward) == len(backward) == 20  # ResNet-18: 17 3x3/7x7 convolutions and 3 projection shortcuts
    for images, weight, *_ in forward:
        assert images.dtype == weight.dtype == torch.bfloat16
        assert images.is_contiguous(memory_format=torch.channels_last)
    for grad, images, weight, *_ in backward:
        assert grad.dtype == images.dtype == weight.dtype == torch.bfloat16
