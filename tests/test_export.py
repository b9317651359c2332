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


@pytest.mark.slow
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


@pytest.mark.slow
def test_unknown_format_is_one_line(trained_run: Path) -> None:  # noqa: F811
    result = subprocess.run([sys.executable, "-m", "torchclr", "export", "--checkpoint", str(trained_run / "encoder.safetensors"),
                             "--format", "tflite"], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--format" in lines[0] and "tflite" in lines[0]


# ---- file handling: the suffix decides the format, writes are atomic, inputs are never overwritten ----

SUFFIXES = (".safetensors", ".pth", ".pt", ".onnx", "")
FITS = {("onnx", ".onnx"), ("torchscript", ".pt"), ("torchvision", ".safetensors"), ("torchvision", ".pth"), ("torchvision", ".pt")}


def _consumer_output(format: str, path: Path, images: torch.Tensor) -> np.ndarray:
    """h from the file, read by the tool it is for, as its suffix says."""
    if format == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["h"], {"images": images.numpy()})[0]
    if format == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(images).numpy()
    import torchvision
    from safetensors.torch import load_file

    net = torchvision.models.get_model("resnet18", weights=None)
    net.fc = torch.nn.Identity()  # the classifier: the one part the encoder has not got
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        return net.eval()(images).numpy()


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("format", ("onnx", "torchscript", "torchvision"))
def test_every_format_and_suffix(format: str, suffix: str, trained_run: Path, tmp_path: Path,  # noqa: F811
                                 capsys: pytest.CaptureFixture) -> None:
    from torchclr.cli import main

    out = tmp_path / f"encoder{suffix}"
    code = main(["export", "--checkpoint", str(trained_run / "encoder.safetensors"), "--format", format, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    if (format, suffix) not in FITS:
        assert code == 2 and len(err) == 1 and f"--out {out}" in err[0] and f"--format {format}" in err[0], err
        assert list(tmp_path.iterdir()) == []
        return
    assert code == 0, err
    images, expected = _eight_images(trained_run)
    assert np.abs(_consumer_output(format, out, images) - expected.numpy()).max() < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json"]  # no temporary left
    if suffix == ".safetensors":
        assert out.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle's zip


def test_default_torchvision_file_is_safetensors_beside_the_checkpoint(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    checkpoint = tmp_path / "encoder.safetensors"
    shutil.copy(trained_run / "encoder.safetensors", checkpoint)
    before = checkpoint.read_bytes()
    done = export(checkpoint, "torchvision")
    assert done.path == tmp_path / "encoder.torchvision.safetensors" and checkpoint.read_bytes() == before


def test_export_onto_its_own_checkpoint_is_refused(trained_run: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    from torchclr.cli import main

    checkpoint = trained_run / "encoder.safetensors"
    before = checkpoint.read_bytes()
    code = main(["export", "--checkpoint", str(checkpoint), "--format", "torchvision", "--out", str(checkpoint)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "an input of this command" in err[0] and checkpoint.read_bytes() == before


def test_a_failed_check_leaves_nothing_at_the_target(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from torchclr.errors import UserError

    module = sys.modules["torchclr.export"]
    monkeypatch.setattr(module, "_run_torchscript", lambda encoder, path, images, suffix: np.full((len(images), 512), np.nan))
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"an older export")
    with pytest.raises(UserError, match="nothing was written"):
        export(trained_run / "encoder.safetensors", "torchscript", out)
    assert out.read_bytes() == b"an older export" and sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt"]


@pytest.mark.parametrize("point", ("while writing", "while checking"))
def test_sigterm_during_export_leaves_no_half_file(point: str, trained_run: Path, tmp_path: Path,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from torchclr.interrupt import Interrupted

    module = sys.modules["torchclr.export"]
    name = "_onnx" if point == "while writing" else "_run_onnx"
    real = getattr(module, name)

    def then_sigterm(encoder, path, images, suffix):  # type: ignore[no-untyped-def]
        result = real(encoder, path, images, suffix)
        assert path.stat().st_size > 0  # half-way: something is on disk under the temporary name
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(module, name, then_sigterm)
    with pytest.raises(Interrupted):
        export(trained_run / "encoder.safetensors", "onnx", tmp_path / "encoder.onnx")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
