"""The settings of SimCLR's view family, shared by the per-image and the batched implementations."""

from __future__ import annotations

from dataclasses import dataclass

from torchclr.errors import UserError


@dataclass(frozen=True)
class AugmentSpec:
    """One random view = crop+resize, flip, colour distortion, grayscale, blur, solarize (paper, appendix A).

    Probabilities of 0 switch an op off; the ablations of the paper's figure 5 re-weight them.
    """

    image_size: int = 32
    crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float | None = None
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    # Only for the figure 5 ablation (`torchclr ablate augment-pairs`; batched views only, see transforms.ablation)
    cutout_p: float = 0.0
    sobel_p: float = 0.0
    noise_p: float = 0.0
    rotate_p: float = 0.0
    one_branch: bool = False  # distort the first view only; the second is the crop alone

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise UserError(f"augment.image_size must be at least 8 pixels, got {self.image_size}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "solarize_p", "cutout_p", "sobel_p", "noise_p", "rotate_p"):
            _check_probability(name, getattr(self, name))
        if self.blur_p is not None:
            _check_probability("blur_p", self.blur_p)
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise UserError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise UserError(f"augment.crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if self.jitter_strength < 0:
            raise UserError(f"augment.jitter_strength must be >= 0, got {self.jitter_strength}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise UserError(f"augment.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")

    @property
    def ablation_only(self) -> bool:
        """Whether an option that only the batched views implement is on."""
        return self.one_branch or any((self.cutout_p, self.sobel_p, self.noise_p, self.rotate_p))

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


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"augment.{name} must be a probability in [0, 1], got {value}")
