"""Encoder f, projection head g, and the SimCLR network that joins them."""

from torchclr.models.encoders import ARCHITECTURES, Encoder, ResNetEncoder, build_encoder, uses_cifar_stem
from torchclr.models.heads import HEAD_KINDS, projection_head
from torchclr.models.simclr import SimCLR, build_simclr

__all__ = ["ARCHITECTURES", "HEAD_KINDS", "Encoder", "ResNetEncoder", "SimCLR", "build_encoder", "build_simclr",
           "projection_head", "uses_cifar_stem"]
