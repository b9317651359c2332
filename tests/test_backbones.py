"""Any backbone: a torchvision non-ResNet, a timm ResNet and a small timm ViT, one training step each on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchclr.cli import main
from torchclr.errors import UserError
from torchclr.models import build_encoder
from torchclr.pretrained import load_encoder

ONE_STEP = ["--epochs", "1", "--batch-size", "16", "--lr", "0.3", "--warmup-epochs", "0", "--knn-every", "0",
            "--no-progress", "--precision", "fp32"]


@pytest.mark.parametrize("arch, feature_dim", [
    ("mobilenet_v3_small", 576),
    ("timm:resnet18", 512),
    ("timm:vit_tiny_patch16_224", 192),
])
@pytest.mark.slow
def test_one_training_step_of_each_backbone_kind(tmp_path: Path, few_images_folder: Path, arch: str, feature_dim: int,
                                                 capfd: pytest.CaptureFixture) -> None:
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(few_images_folder), "--out-dir", str(out), "--arch", arch, *ONE_STEP]) == 0
    assert "ImageNet stem" in capfd.readouterr().err  # the one-line note for non-ResNets on small images
    encoder, _, info = load_encoder(out / "encoder.safetensors")
    assert info["model"]["arch"] == arch and not info["model"]["cifar_stem"] and encoder.feature_dim == feature_dim
    untrained = build_encoder(arch, 32)
    moved = [name for name, value in encoder.state_dict().items()
             if value.is_floating_point() and not torch.equal(value, untrained.state_dict()[name])]
    assert moved  # the step changed the weights (BN statistics and parameters)
    with torch.no_grad():
        h = encoder(torch.rand(3, 3, 32, 32))
    assert h.shape == (3, feature_dim) and torch.isfinite(h).all()


def test_classifiers_are_removed_at_their_first_linear_layer() -> None:
    mobilenet = build_encoder("mobilenet_v3_small", 96)
    assert not any(isinstance(m, nn.Linear) for m in mobilenet.modules())
    convnext = build_encoder("convnext_tiny", 96)
    assert convnext.eval()(torch.rand(2, 3, 96, 96)).shape == (2, 768)


def test_cifar_stem_is_for_resnets_only() -> None:
    assert build_encoder("resnext50_32x4d", 32).cifar_stem
    with pytest.raises(UserError, match="ResNets only"):
        build_encoder("mobilenet_v3_small", 32, cifar_stem=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch, needle", [("timm:no_such_model_xyz", "timm:no_such_model_xyz"), ("no_such_net", "no_such_net")])
def test_unknown_architecture_is_one_line(arch: str, needle: str) -> None:
    result = subprocess.run([sys.executable, "-m", "torchclr", "pretrain", "--arch", arch, "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr
