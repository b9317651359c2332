"""The projection head g: h -> z, where the contrastive loss is applied (paper section 4.2, figure 8)."""

from __future__ import annotations

from torch import nn

from torchclr.errors import UserError

HEAD_KINDS = ("none", "linear", "mlp")


class BatchNormNoShift(nn.BatchNorm1d):
    """BatchNorm with a learnable scale but no learnable shift: the official SimCLR code's last BN of the head
    (`center=False`). The shift stays a parameter, frozen at zero (requires_grad False: no optimiser or DDP sees it),
    so the state dict keeps its keys, files written when it was learnt still load (with their learnt shift), and
    global BN takes it over like any BN parameter."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.bias.requires_grad_(False)


def projection_head(kind: str, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None, num_layers: int = 2, *,
                    learnt_shift: bool = False) -> nn.Module:
    """`none` (z = h), `linear` (one layer), or `mlp` with `num_layers` layers: d -> d -> ... -> out_dim.

    Every hidden layer is Linear + BatchNorm + ReLU; the last is Linear + BatchNorm without bias, learnable shift
    or ReLU, as in the paper's released code (the BN keeps z well scaled for the temperature). `learnt_shift`: the
    last BN learns a shift, as torchclr 0.2's did (for resuming its runs exactly).
    """
    last_norm = nn.BatchNorm1d if learnt_shift else BatchNormNoShift
    if kind not in HEAD_KINDS:
        raise UserError(f"model.head must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), last_norm(out_dim))
    if num_layers < 2:
        raise UserError(f"model.head_layers must be at least 2 for an mlp head, got {num_layers}")
    hidden_dim = hidden_dim or in_dim
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers += [nn.Linear(width, out_dim, bias=False), last_norm(out_dim)]
    return nn.Sequential(*layers)
