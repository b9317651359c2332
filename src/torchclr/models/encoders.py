"""The encoder f: a torchvision ResNet whose pooled feature is the representation h (classifier removed).

For small images (CIFAR, 32 px) the ImageNet stem throws away most pixels, so the paper (appendix B.9)
swaps the 7x7 stride-2 conv for a 3x3 stride-1 conv and drops the max-pool; that is chosen
automatically for inputs up to 64 px.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from torchclr.errors import UserError

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2")
SMALL_IMAGE_MAX_SIZE = 64


class ResNetEncoder(nn.Module):
    """ResNet trunk: image [B, 3, H, W] in [0, 1] -> h [B, feature_dim]."""

    def __init__(self, arch: str, cifar_stem: bool) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise UserError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        net = getattr(torchvision.models, arch)(weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.arch, self.cifar_stem = arch, cifar_stem
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def build_encoder(arch: str, image_size: int, cifar_stem: bool | None = None) -> ResNetEncoder:
    """`cifar_stem=None` picks the small-image stem for inputs of at most 64 px."""
    if cifar_stem is None:
        cifar_stem = image_size <= SMALL_IMAGE_MAX_SIZE
    return ResNetEncoder(arch, cifar_stem)
