"""The extra transforms of the paper's figure 5 ablation (cutout, Sobel, Gaussian noise, rotation), batched.

SimCLR's own view family does not use them, and `torchclr pretrain` has no option for them: `torchclr ablate
augment-pairs` hands an `AblationOps` to the batched augmentation (through `pretrain(..., ablation=...)`) to
re-check that no single transform suffices. Each op takes float images [N,3,H,W] in [0,1] and its per-image
parameters, and runs over the whole batch at once, as the ops of `torchclr.transforms.batched` do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchclr.errors import UserError

CUTOUT_SIDE = (0.25, 0.5)  # side of the square, as a fraction of the view's side (DeVries & Taylor 2017 use one square)
NOISE_STD = (0.0, 0.1)  # standard deviation of the additive noise, on the [0, 1] pixel scale
_SOBEL_MAX = 4 * math.sqrt(2)  # the largest gradient magnitude a [0, 1] image can reach: maps the result into [0, 1]


@dataclass(frozen=True)
class AblationOps:
    """Figure 5's view ops: each with its probability per view, drawn after SimCLR's own distortions (before
    solarize); `one_branch`: of two views only the first is distorted, the second is the crop alone."""

    cutout_p: float = 0.0
    sobel_p: float = 0.0
    noise_p: float = 0.0
    rotate_p: float = 0.0
    one_branch: bool = False

    def __post_init__(self) -> None:
        for name in ("cutout_p", "sobel_p", "noise_p", "rotate_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"ablation op {name} must be a probability in [0, 1], got {value}")

    def __bool__(self) -> bool:
        return self.one_branch or any((self.cutout_p, self.sobel_p, self.noise_p, self.rotate_p))

    @classmethod
    def split(cls, settings: dict[str, Any]) -> tuple[dict[str, Any], "AblationOps"]:
        """(the settings that are pretrain options, the ablation ops among them): a study's cells name both alike."""
        names = {f.name for f in dataclasses.fields(cls)}
        return ({k: v for k, v in settings.items() if k not in names},
                cls(**{k: v for k, v in settings.items() if k in names}))


def cutout(images: Tensor, sides: Tensor, centres: Tensor) -> Tensor:
    """Zero one square per image, as DeVries & Taylor's Cutout: rows y - L//2 to y + L//2 (exclusive) and the same
    columns around x, clipped at the borders, with L = sides[i] and (y, x) = centres[i], both floored to pixels."""
    height, width = images.shape[-2:]
    half = sides.floor().div(2, rounding_mode="floor").view(-1, 1, 1)
    centre_rows, centre_cols = centres.floor().unbind(dim=1)
    rows = torch.arange(height, device=images.device, dtype=sides.dtype).view(1, -1, 1)
    cols = torch.arange(width, device=images.device, dtype=sides.dtype).view(1, 1, -1)
    in_rows = (rows >= centre_rows.view(-1, 1, 1) - half) & (rows < centre_rows.view(-1, 1, 1) + half)
    in_cols = (cols >= centre_cols.view(-1, 1, 1) - half) & (cols < centre_cols.view(-1, 1, 1) + half)
    return images.masked_fill((in_rows & in_cols).unsqueeze(1), 0.0)


def sobel(luma: Tensor) -> Tensor:
    """Gradient magnitude [N,1,H,W] of luma images [N,1,H,W] in [0, 1] (3x3 Sobel, replicated borders), scaled into [0, 1]."""
    padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=luma.dtype, device=luma.device)
    slope = torch.tensor([-1.0, 0.0, 1.0], dtype=luma.dtype, device=luma.device)
    kernels = torch.stack((smooth[:, None] * slope[None, :], slope[:, None] * smooth[None, :])).unsqueeze(1)
    gradients = F.conv2d(padded, kernels)
    return gradients.square().sum(dim=1, keepdim=True).sqrt_().div_(_SOBEL_MAX).clamp_(0.0, 1.0)


def gaussian_noise(images: Tensor, stds: Tensor, noise: Tensor) -> Tensor:
    """images + stds[i] * noise (standard normal, the images' shape), clamped to [0, 1]."""
    return images.add(noise.mul(stds.view(-1, 1, 1, 1))).clamp_(0.0, 1.0)


def rotate90(images: Tensor, quarter_turns: Tensor) -> Tensor:
    """Rotate image i by quarter_turns[i] x 90 degrees counter-clockwise (as torch.rot90); square images only."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate90 needs square images, got {tuple(images.shape[-2:])}")
    out = images
    for turns in (1, 2, 3):
        chosen = (quarter_turns == turns).view(-1, 1, 1, 1)
        out = torch.where(chosen, images.rot90(turns, dims=(-2, -1)), out)
    return out
