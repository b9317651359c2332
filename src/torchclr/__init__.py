"""torchclr: SimCLR in PyTorch. Pretrain an image encoder on unlabelled pictures, evaluate it, carry it into your work.

    from torchclr import load_encoder, pretrain, PretrainConfig

The names load on first use, so that `import torchclr` (and the command line's option errors) stay instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_PUBLIC = {
    "PretrainConfig": "torchclr.config",
    "UserError": "torchclr.errors",
    "pretrain": "torchclr.train",
    "load_encoder": "torchclr.pretrained",
    "load_head": "torchclr.pretrained",
    "Pretrained": "torchclr.pretrained",
    "Encoder": "torchclr.models",
    "build_encoder": "torchclr.models",
    "embed": "torchclr.embed",
    "nearest": "torchclr.neighbors",
    "export": "torchclr.export",
    # The paper's blocks, for a training loop of your own (examples/minimal_simclr.py)
    "AugmentSpec": "torchclr.transforms",
    "view_transform": "torchclr.transforms",
    "TwoViews": "torchclr.transforms",
    "projection_head": "torchclr.models",
    "SimCLR": "torchclr.models",
    "NTXentLoss": "torchclr.loss",
    "LARS": "torchclr.optim",
    "parameter_groups": "torchclr.optim",
    "warmup_cosine": "torchclr.optim",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
