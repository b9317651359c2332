"""The settings of SimCLR's view family, shared by the per-image and the batched implementations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torchclr.errors import UserError


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AugmentSpec:
    """One random view = crop+resize, flip, colour distortion, grayscale, blur, solarize (paper, appendix A).

    Probabilities of 0 switch an op off; the ablations of the paper's figure 5 re-weight them (and add their own
    ops, `torchclr.transforms.ablation`). The fields with a help text are also `torchclr pretrain`'s augmentation
    options (`torchclr.config` declares none of its own). `channels` is --in-channels: colour (hue, saturation,
    grayscale) means something for RGB only, so other counts get a brightness/contrast jitter per band instead
    (`torchclr.transforms.bands`), with the same amplitudes and probability.
    """

    image_size: int = 32
    crop: bool = _opt(True, "random resized crop (off: plain resize)")
    crop_scale: tuple[float, float] = _opt((0.08, 1.0), "area range of the random crop, as fractions of the image")
    crop_ratio: tuple[float, float] = _opt((3 / 4, 4 / 3), "aspect-ratio range of the random crop")
    flip_p: float = _opt(0.5, "probability of a horizontal flip")
    jitter_strength: float = _opt(0.5, "colour distortion strength s (0.5 for CIFAR, 1.0 for ImageNet)")
    jitter_p: float = _opt(0.8, "probability of colour jitter")
    grayscale_p: float = _opt(0.2, "probability of grayscale")
    blur_p: float | None = _opt(None, "probability of Gaussian blur; default: 0.5 for images of 64 px or more, else 0")
    blur_sigma: tuple[float, float] = _opt((0.1, 2.0), "range of the blur's sigma")
    solarize_p: float = _opt(0.0, "probability of solarization")
    solarize_threshold: float = 0.5
    channels: int = 3  # last: positional construction of the fields above keeps its meaning

    def __post_init__(self) -> None:
        check_augment(self, lambda name: f"augment.{name}")
        if self.channels < 1:
            raise UserError(f"augment.channels must be >= 1, got {self.channels}")

    @property
    def colour(self) -> bool:
        """Whether the views get colour jitter and grayscale (RGB), or an intensity jitter per band (any other count)."""
        return self.channels == 3

    @property
    def effective_blur_p(self) -> float:
        """Blur is on (p=0.5) for images of 64 px and more and off for CIFAR-sized ones, as in the paper."""
        if self.blur_p is not None:
            return self.blur_p
        return 0.5 if self.image_size >= 64 else 0.0

    @property
    def blur_kernel_size(self) -> int:
        """An odd kernel about 10% of the side (23 px at 224), at least 3."""
        size = max(3, int(round(0.1 * self.image_size)))
        return size if size % 2 == 1 else size + 1

    @property
    def jitter(self) -> tuple[float, float, float, float]:
        """Brightness, contrast, saturation, hue amplitudes: 0.8s, 0.8s, 0.8s, 0.2s."""
        s = self.jitter_strength
        return 0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5)


def check_augment(values: Any, option: Callable[[str], str]) -> None:
    """The checks of an augmentation's settings (an AugmentSpec or a config with the same field names), each
    error naming the setting as `option(field name)` says: `augment.crop_scale` here, `--crop-scale` for a user."""
    if values.image_size is not None and values.image_size < 8:
        raise UserError(f"{option('image_size')} must be at least 8 pixels, got {values.image_size}")
    for name in ("flip_p", "jitter_p", "grayscale_p", "solarize_p"):
        _check_probability(option(name), getattr(values, name))
    if values.blur_p is not None:
        _check_probability(option("blur_p"), values.blur_p)
    low, high = values.crop_scale
    if not 0 < low <= high <= 1:
        raise UserError(f"{option('crop_scale')} must satisfy 0 < low <= high <= 1, got {tuple(values.crop_scale)}")
    if not 0 < values.crop_ratio[0] <= values.crop_ratio[1]:
        raise UserError(f"{option('crop_ratio')} must satisfy 0 < low <= high, got {tuple(values.crop_ratio)}")
    if values.jitter_strength < 0:
        raise UserError(f"{option('jitter_strength')} must be >= 0, got {values.jitter_strength}")
    if not 0 < values.blur_sigma[0] <= values.blur_sigma[1]:
        raise UserError(f"{option('blur_sigma')} must satisfy 0 < low <= high, got {tuple(values.blur_sigma)}")


def _check_probability(option: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{option} must be a probability in [0, 1], got {value}")
