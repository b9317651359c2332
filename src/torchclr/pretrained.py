"""The encoder file: saving a trained encoder f with its head, and loading it back from that file or from any
training checkpoint.

The encoder comes back in eval mode (BatchNorm uses its running statistics, so an image's h does not depend on
the other images of its batch) together with the transform that prepares an image for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from torchclr import checkpoint
from torchclr.config import PretrainConfig, from_dict
from torchclr.errors import UserError
from torchclr.models import Encoder, SimCLR, build_encoder, uses_cifar_stem
from torchclr.models.encoders import CUSTOM_ARCH
from torchclr.transforms import eval_transform


def model_description(config: PretrainConfig | dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on to be loaded into a model."""
    values = dataclasses.asdict(config) if isinstance(config, PretrainConfig) else config
    stem = uses_cifar_stem(values["arch"], values["image_size"], values["cifar_stem"])
    return {"arch": values["arch"], "cifar_stem": stem, "head": values["head"], "head_layers": values["head_layers"],
            "proj_dim": values["proj_dim"], "head_shift": values.get("head_shift", True),  # 0.2 wrote none: its shift was learnt
            "in_channels": values.get("in_channels", 3)}


def stored_description(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model description; one of torchclr 0.2 (no head_shift) had a learnt shift in its head, and
    one written before --in-channels took RGB."""
    return {"head_shift": True, "in_channels": 3, **meta}


def config_as_json(config: PretrainConfig) -> dict[str, Any]:
    """The config as a checkpoint's metadata keeps it (pairs as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def save_encoder(path: Path, model: SimCLR, config: PretrainConfig) -> None:
    """The encoder (what users carry into their work) and its projection head (for z), loadable with
    `load_encoder` and `load_head`."""
    info = {"kind": "encoder", "model": model_description(config), "image_size": config.image_size,
            "feature_dim": model.encoder.feature_dim, "config": config_as_json(config)}
    tensors = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    checkpoint.save_atomically(tensors, info, path)


class Pretrained(NamedTuple):
    """`encoder, transform, info = load_encoder(path)`; `h = encoder(transform(image)[None])`."""

    encoder: Encoder
    transform: Callable[[Any], torch.Tensor]
    info: dict[str, Any]


def load_encoder(path: str | Path, encoder: nn.Module | None = None) -> Pretrained:
    """The encoder (eval mode, float32, CPU), the transform that turns a PIL image or a uint8 tensor [C, H, W] into
    its float input [C, S, S] in [0, 1] (the evaluation centre view), and the checkpoint's metadata with its config
    (its `in_channels` is C; `torchclr.data.reader.read_image_file` with that many channels reads a file for it).

    A checkpoint of a run that pretrained the user's own module (arch 'custom') needs that module as `encoder`.
    """
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") not in ("encoder", "training"):
        raise UserError(f"checkpoint {path} holds neither an encoder nor a training state")
    config = from_dict(meta["config"], f"checkpoint {path}")
    description = meta["model"]
    if encoder is not None:
        model = Encoder.wrap(encoder, config.image_size, in_channels=config.in_channels)
    elif description["arch"] == CUSTOM_ARCH:
        raise UserError(f"checkpoint {path} holds a custom encoder module: pass the module, load_encoder(path, encoder=module)")
    else:
        model = build_encoder(description["arch"], config.image_size, description["cifar_stem"], in_channels=config.in_channels)
    prefix = "encoder." if meta["kind"] == "encoder" else "model.encoder."
    checkpoint.load_model_state(model, checkpoint.model_tensors(tensors, prefix), path, f"{description['arch']} encoder")
    meta["config"] = config
    return Pretrained(model.eval(), eval_transform(config.image_size), meta)


def load_head(path: str | Path, encoder: Encoder) -> nn.Module:
    """The projection head g of the checkpoint (for z = g(h)), in eval mode."""
    from torchclr.models import projection_head

    tensors, meta = checkpoint.load(path)
    description = meta["model"]
    head = projection_head(description["head"], encoder.feature_dim, description["proj_dim"], num_layers=description["head_layers"],
                           learnt_shift=stored_description(description)["head_shift"])
    prefix = "head." if meta["kind"] == "encoder" else "model.head."
    state = checkpoint.model_tensors(tensors, prefix)
    if not state and list(head.state_dict()):
        raise UserError(f"checkpoint {path} holds no projection head (an encoder file written before torchclr 0.2 "
                        "keeps h only; use a training checkpoint for z)")
    checkpoint.load_model_state(head, state, path, f"{description['head']} projection head")
    return head.eval()
