"""SimCLR's random views: the per-image reference on torchvision.transforms.v2 and the batched fast path.

The implementations load on first use, so that reading a config (which needs only `AugmentSpec`) does not
import torch and torchvision: `torchclr --help` and option errors answer at once.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torchclr.transforms.spec import AugmentSpec

_LAZY = {"BatchAugment": "batched", "StagedAugment": "batched", "CentreView": "centre", "TwoViews": "views",
         "eval_transform": "centre", "view_transform": "views"}

__all__ = ["AugmentSpec", "BatchAugment", "CentreView", "StagedAugment", "TwoViews", "eval_transform", "view_transform"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"torchclr.transforms.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
