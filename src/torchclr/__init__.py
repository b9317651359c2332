"""torchclr: SimCLR in PyTorch. Pretrain an image encoder on unlabelled pictures, evaluate it, carry it into your work.

    from torchclr import load_encoder, pretrain, PretrainConfig

The names load on first use, so that `import torchclr` (and the command line's option errors) stay instant.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
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
    "evaluate": "torchclr.evaluate",
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


class _Package(ModuleType):
    """The package, whose public functions `embed` and `export` live in submodules of the same name.

    Importing a submodule makes Python bind it on its package (`torchclr.embed = <module torchclr.embed>`), which
    would hide the function from then on: `from torchclr import embed` gave the module whenever anything had
    imported `torchclr.embed` before. Here that binding stores the function instead; the module itself stays in
    `sys.modules` (reach it with `importlib.import_module("torchclr.embed")`).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and _PUBLIC.get(name) == value.__name__ and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
