"""`torchclr export`: the encoder as ONNX, TorchScript or a plain torchvision state dict, with a JSON of its input.

Whatever runs the file next (onnxruntime, a C++ service, torchvision) needs to know how images were prepared;
`<file>.json` beside it says so (resize, centre crop, scale to [0, 1], no mean/std). After writing, the file is
run on the same images as the PyTorch encoder and the largest difference is reported.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchclr.errors import UserError
from torchclr.models.encoders import Encoder, is_resnet_arch
from torchclr.pretrained import load_encoder
from torchclr.transforms.centre import stored_side

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "torchvision": ".pth"}
OPSET = 17


@dataclass
class Exported:
    path: Path
    description: Path
    max_abs_diff: float | None  # None where the runtime to check it is not installed


def preprocessing(encoder: Encoder, image_size: int) -> dict[str, Any]:
    """The input the exported encoder expects, in words a non-Python runtime can follow."""
    return {
        "input": {"name": "images", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0],
                  "shape": ["batch", 3, image_size, image_size]},
        "resize_shorter_side": stored_side(image_size), "center_crop": image_size,
        "scale": "pixel / 255", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
        "output": {"name": "h", "shape": ["batch", encoder.feature_dim]},
    }


def export(checkpoint: str | Path, format: str, out: str | Path | None = None, check_images: torch.Tensor | None = None) -> Exported:
    """Write the checkpoint's encoder in `format` to `out` (default: beside the checkpoint) and check it.

    `check_images` (float [B, 3, S, S] in [0, 1]) are what the exported file is compared on; default: 8 seeded
    random images.
    """
    if format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    encoder, _, info = load_encoder(checkpoint)
    size = info["config"].image_size
    path = Path(out) if out else Path(checkpoint).with_suffix(FORMATS[format])
    path.parent.mkdir(parents=True, exist_ok=True)
    if check_images is None:
        check_images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = encoder(check_images).numpy()
    writer = {"onnx": _onnx, "torchscript": _torchscript, "torchvision": _torchvision}[format]
    got = writer(encoder, path, check_images)
    description = path.with_name(path.name + ".json")
    from torchclr import __version__

    values = {"format": format, "file": path.name, "arch": encoder.arch, "cifar_stem": encoder.cifar_stem,
              "feature_dim": encoder.feature_dim, "checkpoint": str(checkpoint), "torchclr_version": __version__,
              **preprocessing(encoder, size)}
    if format == "torchvision":
        values["load"] = _torchvision_recipe(encoder)
    description.write_text(json.dumps(values, indent=2))
    return Exported(path, description, None if got is None else float(np.abs(got - expected).max()))


def _onnx(encoder: Encoder, path: Path, images: torch.Tensor) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that a newer one exists (it needs onnxscript)
        torch.onnx.export(encoder, (images[:1],), str(path), input_names=["images"], output_names=["h"],
                          dynamic_axes={"images": {0: "batch"}, "h": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["h"], {"images": images.numpy()})[0]


def _torchscript(encoder: Encoder, path: Path, images: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, which has no file a C++ program loads
        traced = torch.jit.trace(encoder, images[:1])
        traced.save(str(path))
        return torch.jit.load(str(path))(images).numpy()


def _torchvision(encoder: Encoder, path: Path, images: torch.Tensor) -> np.ndarray:
    """The backbone's own state dict (torchvision key names), loaded back into a fresh torchvision model."""
    if encoder.arch.startswith("timm:") or encoder.arch == "custom":
        raise UserError(f"--format torchvision needs a torchvision --arch; this checkpoint is {encoder.arch} (use onnx or torchscript)")
    state = encoder.net.state_dict()
    torch.save(state, path)
    from torchclr.models import build_encoder

    fresh = build_encoder(encoder.arch, images.shape[-1], encoder.cifar_stem)
    fresh.net.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        return fresh.eval()(images).numpy()


def _torchvision_recipe(encoder: Encoder) -> str:
    stem = ("; then net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); net.maxpool = torch.nn.Identity()"
            if encoder.cifar_stem else "")
    if is_resnet_arch(encoder.arch):
        return (f"net = torchvision.models.get_model({encoder.arch!r}, weights=None); net.fc = torch.nn.Identity(){stem}; "
                "net.load_state_dict(torch.load(file, weights_only=True)); net.eval()")
    return (f"net = torchclr.build_encoder({encoder.arch!r}, image_size).net (torchvision's model with its classifier cut "
            "at the first Linear layer); net.load_state_dict(torch.load(file, weights_only=True)); net.eval()")
