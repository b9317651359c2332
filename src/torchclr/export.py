"""`torchclr export`: the encoder as ONNX, TorchScript or a plain torchvision or timm state dict, with a JSON of its
input (docs/transfer.md puts a torchvision ResNet file into a detector or a segmentation model).

Whatever runs the file next (onnxruntime, a C++ service, torchvision) needs to know how images were prepared;
`<file>.json` beside it says so (resize, centre crop, scale to [0, 1], no mean/std). After writing, the file is
run on the same images as the PyTorch encoder and the largest difference is reported.

The suffix of the file says its format to every tool that opens it (`torch.load` reads `.safetensors` names as
safetensors, whatever is inside), so it must fit the format: `.safetensors` (the safe default for weights, no
pickle) or `.pth` / `.pt` (`torch.save`) for a torchvision or timm state dict, `.pt` for TorchScript, `.onnx` for ONNX;
anything else is refused in one line. The file is written to a temporary name in the target folder, loaded back by
its consumer and compared, and only then renamed: a failed check leaves nothing at the target path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchclr.errors import UserError
from torchclr.models.channels import RGB
from torchclr.models.encoders import CUSTOM_ARCH, TIMM_PREFIX, Encoder, is_resnet_arch
from torchclr.pretrained import load_encoder
from torchclr.transforms.centre import stored_side
from torchclr.writer import check_output, write_atomically, write_json

# The suffixes each format may be written under; the first is the default.
FORMATS = {"onnx": (".onnx",), "torchscript": (".pt",), "torchvision": (".safetensors", ".pth", ".pt"),
           "timm": (".safetensors", ".pth", ".pt")}
OPSET = 17
MAX_ABS_DIFF = 1e-3  # a file whose h differs more from PyTorch's on the check images is not kept


@dataclass
class Exported:
    path: Path
    description: Path
    max_abs_diff: float | None  # None where the runtime to check it is not installed


def preprocessing(encoder: Encoder, image_size: int) -> dict[str, Any]:
    """The input the exported encoder expects, in words a non-Python runtime can follow."""
    channels = encoder.in_channels
    return {
        "input": {"name": "images", "layout": "NCHW", "channels": "RGB" if channels == RGB else f"{channels} bands",
                  "dtype": "float32", "range": [0.0, 1.0], "shape": ["batch", channels, image_size, image_size]},
        "resize_shorter_side": stored_side(image_size), "center_crop": image_size,
        "scale": "pixel / 255 (16-bit: pixel / 65535)", "mean": [0.0] * channels, "std": [1.0] * channels,
        "output": {"name": "h", "shape": ["batch", encoder.feature_dim]},
    }


def output_file(checkpoint: str | Path, format: str, out: str | Path | None) -> Path:
    """The file to write: `out`, whose suffix must fit `format`, or a default beside the checkpoint."""
    if format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    suffixes = FORMATS[format]
    if out is None:
        checkpoint = Path(checkpoint)
        return checkpoint.with_name(f"{checkpoint.stem}.{format}{suffixes[0]}")
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        given = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise UserError(f"--out {path} has {given}; --format {format} is written as {' or '.join(suffixes)} "
                        "(the suffix tells every tool how to read the file)")
    return path


def export(checkpoint: str | Path, format: str, out: str | Path | None = None, check_images: torch.Tensor | None = None) -> Exported:
    """Write the checkpoint's encoder in `format` to `out` (default: beside the checkpoint) and check it.

    `check_images` (float [B, C, S, S] in [0, 1], C the encoder's channels) are what the exported file is compared on; default: 8 seeded
    random images. The output's suffix must fit the format (see FORMATS); `out` may not be the checkpoint itself.
    """
    path = output_file(checkpoint, format, out)
    description = path.with_name(path.name + ".json")
    for target in (path, description):
        check_output(target, "--out", inputs=[checkpoint])
    encoder, _, info = load_encoder(checkpoint)
    size = info["config"].image_size
    if check_images is None:
        check_images = torch.rand(8, encoder.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = encoder(check_images).numpy()
    writer, reader = {"onnx": (_onnx, _run_onnx), "torchscript": (_torchscript, _run_torchscript),
                      "torchvision": (_torchvision, _run_state_dict), "timm": (_timm, _run_state_dict)}[format]

    def check(tmp: Path) -> float | None:
        got = reader(encoder, tmp, check_images, path.suffix.lower())
        if got is None:
            return None
        diff = float(np.abs(got - expected).max()) if np.isfinite(got).all() else float("inf")
        if not diff <= MAX_ABS_DIFF * max(1.0, float(np.abs(expected).max())):
            raise UserError(f"the exported {format} file gives h up to {diff:.3g} away from PyTorch's on the check "
                            f"images; nothing was written at {path}")
        return diff

    max_abs_diff = write_atomically(path, lambda tmp: writer(encoder, tmp, check_images, path.suffix.lower()),
                                    what=f"the {format} export", check=check)
    from torchclr import __version__

    values = {"format": format, "file": path.name, "arch": encoder.arch, "cifar_stem": encoder.cifar_stem,
              "in_channels": encoder.in_channels,
              "feature_dim": encoder.feature_dim, "checkpoint": str(checkpoint), "torchclr_version": __version__,
              **preprocessing(encoder, size)}
    if format in ("torchvision", "timm"):
        recipe = _torchvision_recipe if format == "torchvision" else _timm_recipe
        values["load"] = recipe(encoder, _load_call(path.suffix.lower()))
    write_json(description, values, what="the export's description")
    return Exported(path, description, max_abs_diff)


def _onnx(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that a newer one exists (it needs onnxscript)
        torch.onnx.export(encoder, (images[:1],), str(path), input_names=["images"], output_names=["h"],
                          dynamic_axes={"images": {0: "batch"}, "h": {0: "batch"}}, opset_version=OPSET, dynamo=False)


def _run_onnx(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> np.ndarray | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["h"], {"images": images.numpy()})[0]


def _torchscript(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, which has no file a C++ program loads
        torch.jit.trace(encoder, images[:1]).save(str(path))


def _run_torchscript(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))(images).numpy()


def _torchvision(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> None:
    """The backbone's own state dict (torchvision key names): safetensors, or torch.save for .pth / .pt."""
    if encoder.arch.startswith(TIMM_PREFIX) or encoder.arch == CUSTOM_ARCH:
        other = " or timm" if encoder.arch.startswith(TIMM_PREFIX) else ""
        raise UserError(f"--format torchvision needs a torchvision --arch; this checkpoint is {encoder.arch} (use onnx, "
                        f"torchscript{other})")
    _save_state(encoder, path, suffix)


def _timm(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> None:
    """The backbone's own state dict (timm key names, the model made with num_classes=0), as `_torchvision`."""
    if not encoder.arch.startswith(TIMM_PREFIX):
        raise UserError(f"--format timm needs a timm:NAME --arch; this checkpoint is {encoder.arch} "
                        "(use torchvision, onnx or torchscript)")
    _save_state(encoder, path, suffix)


def _save_state(encoder: Encoder, path: Path, suffix: str) -> None:
    state = {key: value.detach().contiguous() for key, value in encoder.net.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def _run_state_dict(encoder: Encoder, path: Path, images: torch.Tensor, suffix: str) -> np.ndarray:
    """The file loaded back, as its suffix says, into a fresh torchvision or timm model (strict: every key must fit)."""
    from torchclr.models import build_encoder

    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
    fresh = build_encoder(encoder.arch, images.shape[-1], encoder.cifar_stem, in_channels=encoder.in_channels)
    fresh.net.load_state_dict(state)
    with torch.no_grad():
        return fresh.eval()(images).numpy()


def _load_call(suffix: str) -> str:
    return "safetensors.torch.load_file(file)" if suffix == ".safetensors" else "torch.load(file, weights_only=True)"


def _timm_recipe(encoder: Encoder, load: str) -> str:
    name = encoder.arch[len(TIMM_PREFIX):]
    return (f"net = timm.create_model({name!r}, pretrained=False, num_classes=0, in_chans={encoder.in_channels}) "
            f"(ViTs and other fixed-size models: also img_size=image_size); net.load_state_dict({load}); net.eval()")


def _torchvision_recipe(encoder: Encoder, load: str) -> str:
    channels = encoder.in_channels
    stem = (f"; then net.conv1 = torch.nn.Conv2d({channels}, 64, 3, 1, 1, bias=False); net.maxpool = torch.nn.Identity()"
            if encoder.cifar_stem else
            f"; then net.conv1 = torch.nn.Conv2d({channels}, 64, 7, 2, 3, bias=False)" if channels != RGB else "")
    if is_resnet_arch(encoder.arch):
        return (f"net = torchvision.models.get_model({encoder.arch!r}, weights=None); net.fc = torch.nn.Identity(){stem}; "
                f"net.load_state_dict({load}); net.eval()")
    return (f"net = torchclr.build_encoder({encoder.arch!r}, image_size, in_channels={channels}).net (torchvision's model "
            "with its classifier cut "
            f"at the first Linear layer); net.load_state_dict({load}); net.eval()")
