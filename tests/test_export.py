"""torchclr export: ONNX (run with onnxruntime), TorchScript and torchvision files give PyTorch's h to 1e-4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from carry_fixtures import trained_run  # noqa: F401 (a fixture)
from PIL import Image

from torchclr.export import export
from torchclr.pretrained import load_encoder


def _eight_images(trained_run: Path) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: F811
    encoder, transform, info = load_encoder(trained_run / "encoder.safetensors")
    files = sorted((Path(info["config"].data) / "test").rglob("*.png"))[::2][:8]
    images = torch.stack([transform(Image.open(f)) for f in files])
    with torch.no_grad():
        return images, encoder(images)


def test_onnx_matches_pytorch(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    onnxruntime = pytest.importorskip("onnxruntime")
    images, expected = _eight_images(trained_run)
    done = export(trained_run / "encoder.safetensors", "onnx", tmp_path / "encoder.onnx", check_images=images)
    session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    got = session.run(["h"], {"images": images.numpy()})[0]  # 8 images through a file exported on 1: the batch axis is free
    assert np.abs(got - expected.numpy()).max() < 1e-4 and done.max_abs_diff < 1e-4
    described = json.loads(done.description.read_text())
    assert described["input"]["shape"] == ["batch", 3, 32, 32] and described["mean"] == [0, 0, 0]
    assert described["output"]["shape"] == ["batch", 512] and described["center_crop"] == 32


def test_torchscript_matches_pytorch(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    images, expected = _eight_images(trained_run)
    done = export(trained_run / "encoder.safetensors", "torchscript", tmp_path / "encoder.pt", check_images=images)
    with torch.no_grad():
        got = torch.jit.load(str(done.path))(images)
    assert (got - expected).abs().max() < 1e-4


def test_torchvision_state_dict_loads_into_torchvision(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    import torchvision

    images, expected = _eight_images(trained_run)
    done = export(trained_run / "encoder.safetensors", "torchvision", tmp_path / "encoder.pth")
    net = torchvision.models.get_model("resnet18", weights=None)
    net.fc = torch.nn.Identity()
    net.load_state_dict(torch.load(done.path, weights_only=True))
    with torch.no_grad():
        assert (net.eval()(images) - expected).abs().max() < 1e-4
    assert "net.fc = torch.nn.Identity()" in json.loads(done.description.read_text())["load"]


def test_unknown_format_is_one_line(trained_run: Path) -> None:  # noqa: F811
    result = subprocess.run([sys.executable, "-m", "torchclr", "export", "--checkpoint", str(trained_run / "encoder.safetensors"),
                             "--format", "tflite"], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--format" in lines[0] and "tflite" in lines[0]
