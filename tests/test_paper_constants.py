"""Every constant of the paper's view family (appendix A) and of the presets (section 2.3, appendix B.1, B.9),
written out here from the paper, checked against the spec and against both implementations that use it."""

from __future__ import annotations

import pytest
from torchvision.transforms import v2

from torchclr.config import PretrainConfig, load_yaml
from torchclr.models.encoders import uses_cifar_stem
from torchclr.optim import scaled_lr
from torchclr.transforms import AugmentSpec, BatchAugment, view_transform

# Appendix A: "color distortion with strength s": brightness, contrast, saturation 0.8s, hue 0.2s, applied with
# probability 0.8; random grayscale with probability 0.2; Gaussian blur with probability 0.5, sigma uniform in
# [0.1, 2.0], kernel 10% of the image side; random crop of 0.08 to 1 of the area, aspect ratio 3/4 to 4/3,
# resized, with a random horizontal flip.
PAPER_JITTER = (0.8, 0.8, 0.8, 0.2)  # x s
JITTER_P, GRAYSCALE_P, BLUR_P, BLUR_SIGMA = 0.8, 0.2, 0.5, (0.1, 2.0)
CROP_SCALE, CROP_RATIO, FLIP_P = (0.08, 1.0), (3 / 4, 4 / 3), 0.5


def preset(name: str) -> PretrainConfig:
    return PretrainConfig(**load_yaml(name))


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_colour_distortion_amplitudes_are_the_papers(strength: float) -> None:
    spec = AugmentSpec(image_size=224, jitter_strength=strength)
    assert spec.jitter == pytest.approx(tuple(a * strength for a in PAPER_JITTER))
    # The batched path draws each factor from exactly these ranges (hue: a shift of +-0.2s).
    ranges = {name: (low, high) for name, low, high, _ in BatchAugment(spec)._jitter_ops}
    for name, amplitude in zip(("brightness", "contrast", "saturation"), PAPER_JITTER):
        assert ranges[name] == pytest.approx((1 - amplitude * strength, 1 + amplitude * strength))
    assert ranges["hue"] == pytest.approx((-0.2 * strength, 0.2 * strength))


def test_view_family_defaults_are_the_papers() -> None:
    spec = AugmentSpec(image_size=224)
    assert (spec.jitter_p, spec.grayscale_p, spec.effective_blur_p, spec.blur_sigma) == (JITTER_P, GRAYSCALE_P, BLUR_P, BLUR_SIGMA)
    assert spec.crop_scale == CROP_SCALE and spec.crop_ratio == pytest.approx(CROP_RATIO) and spec.flip_p == FLIP_P
    assert spec.solarize_p == 0  # not in SimCLR (v1)
    assert AugmentSpec(image_size=32).effective_blur_p == 0  # appendix B.9: no blur on CIFAR-10


@pytest.mark.parametrize("side", [32, 64, 96, 224])
def test_blur_kernel_is_an_odd_tenth_of_the_side(side: int) -> None:
    kernel = AugmentSpec(image_size=side).blur_kernel_size
    assert kernel % 2 == 1 and abs(kernel - 0.1 * side) <= 1.5


def test_per_image_reference_uses_the_papers_constants() -> None:
    """The torchvision v2 pipeline (--augment-mode per-image) built from the default spec at 224 px, op by op."""
    ops = {type(op).__name__: op for op in view_transform(AugmentSpec(image_size=224, jitter_strength=1.0)).transforms}
    crop = ops["RandomResizedCrop"]
    assert crop.scale == CROP_SCALE and crop.ratio == pytest.approx(CROP_RATIO) and tuple(crop.size) == (224, 224)
    assert ops["RandomHorizontalFlip"].p == FLIP_P
    jitter, blur = (op for op in view_transform(AugmentSpec(image_size=224)).transforms if isinstance(op, v2.RandomApply))
    jitter_op = jitter.transforms[0]
    assert jitter.p == JITTER_P and isinstance(jitter_op, v2.ColorJitter)
    strength = AugmentSpec(image_size=224).jitter_strength
    for name, amplitude in zip(("brightness", "contrast", "saturation"), PAPER_JITTER):
        assert getattr(jitter_op, name) == pytest.approx((1 - amplitude * strength, 1 + amplitude * strength))
    assert jitter_op.hue == pytest.approx((-0.2 * strength, 0.2 * strength))
    assert ops["RandomGrayscale"].p == GRAYSCALE_P
    blur_op = blur.transforms[0]
    assert blur.p == BLUR_P and blur_op.sigma == pytest.approx(list(BLUR_SIGMA)) and blur_op.kernel_size == (23, 23)


def test_imagenet_preset_is_the_papers() -> None:
    """Section 2.3 / appendix B.1: ResNet-50 at 224 px, batch 4096, LARS with lr 0.3 x B/256 = 4.8, weight decay
    1e-6, momentum 0.9, 100 epochs with 10 of warm-up, temperature 0.1, 2-layer MLP head to 128-d, colour strength 1,
    blur."""
    config = preset("imagenet")
    assert (config.arch, config.image_size, config.batch_size, config.optimizer) == ("resnet50", 224, 4096, "lars")
    assert scaled_lr(config.lr, config.batch_size, config.lr_scaling) == pytest.approx(4.8)
    assert (config.weight_decay, config.momentum, config.epochs, config.warmup_epochs) == (1e-6, 0.9, 100, 10)
    assert (config.loss, config.temperature, config.head, config.head_layers, config.proj_dim) == ("nt_xent", 0.1, "mlp", 2, 128)
    spec = config.augment_spec()
    assert spec.jitter_strength == 1.0 and spec.effective_blur_p == BLUR_P and not uses_cifar_stem(config.arch, 224, config.cifar_stem)


def test_cifar10_preset_is_the_papers() -> None:
    """Appendix B.9: ResNet-50 with a 3x3 stride-1 first convolution and no max-pool, colour strength 0.5, no blur,
    32 px, NT-Xent with the 2-layer MLP head, LARS."""
    config = preset("cifar10")
    assert (config.arch, config.image_size, config.optimizer, config.loss) == ("resnet50", 32, "lars", "nt_xent")
    assert uses_cifar_stem(config.arch, config.image_size, config.cifar_stem)
    spec = config.augment_spec()
    assert spec.jitter_strength == 0.5 and spec.effective_blur_p == 0
    assert (spec.crop_scale, spec.jitter_p, spec.grayscale_p) == (CROP_SCALE, JITTER_P, GRAYSCALE_P)
    assert (config.head, config.head_layers, config.proj_dim) == ("mlp", 2, 128)
