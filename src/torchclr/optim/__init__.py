"""Optimisers for SimCLR: LARS (the paper's), SGD and AdamW over weight-decay-aware parameter groups, and the lr schedule."""

from __future__ import annotations

import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.optim.lars import LARS
from torchclr.optim.schedule import LR_SCALING_RULES, scaled_lr, set_learning_rate, warmup_cosine, warmup_cosine_scheduler

OPTIMIZER_NAMES = ("lars", "sgd", "adamw")

NORM_LAYERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.RMSNorm,
)


def _is_excluded(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation parameters neither decay nor adapt: the official SimCLR code's LARS exclusion
    (`exclude_from_weight_decay` / `exclude_from_layer_adaptation` of 'batch_normalization' and 'bias'); the paper
    does not state it."""
    return isinstance(module, NORM_LAYERS) or name == "bias" or param.ndim <= 1


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into a decayed, LARS-adapted group and an excluded one (weight_decay 0).

    Each parameter is judged by the module that owns it, so a torch.compile'd or DDP-wrapped model gives the
    same groups as the bare one. Shared parameters are listed once; frozen ones (requires_grad False) not at all.
    Empty groups are left out.
    """
    adapted: list[nn.Parameter] = []
    excluded: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (excluded if _is_excluded(module, name, param) else adapted).append(param)
    groups = [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """The optimiser named in the config over `parameter_groups`; AdamW keeps its default betas (momentum is for lars/sgd)."""
    groups = parameter_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise UserError(f"optimizer must be one of {', '.join(OPTIMIZER_NAMES)}, got {name!r}")


__all__ = [
    "LARS", "LR_SCALING_RULES", "NORM_LAYERS", "OPTIMIZER_NAMES", "build_optimizer", "parameter_groups", "scaled_lr",
    "set_learning_rate", "warmup_cosine", "warmup_cosine_scheduler",
]
