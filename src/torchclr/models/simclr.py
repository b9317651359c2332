"""SimCLR's network: encoder f gives the representation h, projection head g gives z for the loss."""

from __future__ import annotations

import torch
from torch import nn

from torchclr.models.encoders import Encoder, build_encoder
from torchclr.models.heads import projection_head


class SimCLR(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(images)
        return h, self.head(h)


def build_simclr(arch: str, image_size: int, cifar_stem: bool | None, head: str, head_layers: int, out_dim: int,
                 encoder_module: nn.Module | None = None, *, zero_init_residual: bool = False,
                 head_shift: bool = False, in_channels: int = 3) -> SimCLR:
    """SimCLR on the encoder `arch` names (see `build_encoder` for `zero_init_residual` and `in_channels`), or on
    the user's own `encoder_module` when given."""
    encoder = (Encoder.wrap(encoder_module, image_size, in_channels=in_channels) if encoder_module is not None
               else build_encoder(arch, image_size, cifar_stem, zero_init_residual=zero_init_residual, in_channels=in_channels))
    return SimCLR(encoder, projection_head(head, encoder.feature_dim, out_dim, num_layers=head_layers, learnt_shift=head_shift))
