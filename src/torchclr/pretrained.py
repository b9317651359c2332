"""Loading a trained encoder f back, from an exported encoder file or from any training checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchclr import checkpoint
from torchclr.config import from_dict
from torchclr.errors import UserError
from torchclr.models import ResNetEncoder


def load_encoder(path: str | Path) -> tuple[ResNetEncoder, dict[str, Any]]:
    """The encoder (h = encoder(images in [0, 1])) and the checkpoint's metadata, including its config."""
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") not in ("encoder", "training"):
        raise UserError(f"checkpoint {path} holds neither an encoder nor a training state")
    description = meta["model"]
    encoder = ResNetEncoder(description["arch"], description["cifar_stem"])
    prefix = "encoder." if meta["kind"] == "encoder" else "model.encoder."
    checkpoint.load_model_state(encoder, checkpoint.model_tensors(tensors, prefix), path, f"{description['arch']} encoder")
    meta["config"] = from_dict(meta["config"], f"checkpoint {path}")
    return encoder, meta
