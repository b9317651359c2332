"""The encoder's first convolution for `--in-channels N` (issue 21): grayscale and multi-band images need a stem
that takes N channels, and pretrained RGB weights (`--init`) need adapting to it rather than being thrown away.

Every backbone torchclr builds (torchvision ResNets with either stem, other torchvision models, timm models) starts
with a `Conv2d` of 3 input channels; it is rebuilt with N, everything else kept. 3-channel weights W [O, 3, k, k]
become mean_c(W) repeated N times and scaled by 3/N: an image whose N bands all equal x then gives the response the
RGB network gives to the gray image (x, x, x), whatever N (the adaptation timm's `adapt_input_conv` makes for 1
channel, generalised).
"""

from __future__ import annotations

import torch
from torch import nn

from torchclr.errors import UserError

RGB = 3


def first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    """(qualified name, module) of the first `Conv2d` of `net`: the stem, in every backbone torchclr builds."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise UserError(f"--in-channels: {type(net).__name__} has no convolution to take the channels")


def input_channels(net: nn.Module) -> int:
    """The channels `net` takes (those of its first convolution; 3 for a network without one): what the memory
    probes feed it, whatever wraps it (DDP, torch.compile)."""
    try:
        return first_conv(net)[1].in_channels
    except UserError:
        return RGB


def set_in_channels(net: nn.Module, channels: int) -> None:
    """Rebuild the 3-channel first convolution of `net` for `channels` inputs (fresh weights), in place."""
    if channels == RGB:
        return
    name, conv = first_conv(net)
    if conv.in_channels != RGB:
        raise UserError(f"--in-channels: the first convolution of {type(net).__name__} ({name}) takes {conv.in_channels} "
                        f"channels, not {RGB}")
    rebuilt = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)  # type: ignore[arg-type]
    parent_name, _, attribute = name.rpartition(".")
    setattr(net.get_submodule(parent_name), attribute, rebuilt)


def adapt_rgb_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """3-channel conv weights [O, 3, k, k] for `channels` inputs: the mean over the 3, repeated, scaled by 3/N."""
    return weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1) * (RGB / channels)
