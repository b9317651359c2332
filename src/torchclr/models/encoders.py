"""The encoder f: any backbone whose pooled feature is the representation h (classifier removed).

`--arch` takes a torchvision classification model by name (`resnet50`, `mobilenet_v3_small`, `convnext_tiny`,
`vit_b_16`, ...), a timm model as `timm:NAME` (timm is an optional extra), and the Python API takes a user's own
`nn.Module`. All become an `Encoder`: images [B, C, H, W] in [0, 1] -> h [B, feature_dim], C = 3 unless
`--in-channels` says otherwise (`torchclr.models.channels` rebuilds the first convolution).

For small images (CIFAR, 32 px) the ImageNet stem of a ResNet throws away most pixels, so the paper
(appendix B.9) swaps the 7x7 stride-2 conv for a 3x3 stride-1 conv and drops the max-pool; that is chosen
automatically for ResNets on inputs up to 64 px. Other backbones keep their own stem (a one-line note says so).
"""

from __future__ import annotations

import math
import sys

import torch
import torchvision
from torch import nn

from torchclr.errors import UserError
from torchclr.models.channels import RGB, set_in_channels

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2")
SMALL_IMAGE_MAX_SIZE = 64
TIMM_PREFIX = "timm:"
CUSTOM_ARCH = "custom"
_CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")
_noted: set[tuple[str, int]] = set()


class Encoder(nn.Module):
    """A backbone without classifier: image [B, C, H, W] in [0, 1] -> h [B, feature_dim] (C: `in_channels`).

    The backbone lives in `self.net`, so the state-dict keys of a ResNet are those torchclr always wrote.
    """

    def __init__(self, net: nn.Module, feature_dim: int, arch: str = CUSTOM_ARCH, cifar_stem: bool = False, *,
                 in_channels: int = RGB) -> None:
        super().__init__()
        self.net, self.feature_dim, self.arch, self.cifar_stem = net, feature_dim, arch, cifar_stem
        self.in_channels = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @classmethod
    def wrap(cls, module: nn.Module, image_size: int, *, in_channels: int = RGB) -> "Encoder":
        """A user's module (taking `in_channels`) as an encoder; its output size is read from `module.feature_dim`
        or one dry forward."""
        if isinstance(module, Encoder):
            return module
        feature_dim = (getattr(module, "feature_dim", None)
                       or _dry_feature_dim(module, image_size, in_channels, "the given encoder module"))
        return cls(module, int(feature_dim), in_channels=in_channels)


class ResNetEncoder(Encoder):
    """A torchvision ResNet trunk, with the CIFAR stem when asked."""

    def __init__(self, arch: str, cifar_stem: bool) -> None:
        if arch not in ARCHITECTURES:
            raise UserError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        net = getattr(torchvision.models, arch)(weights=None)
        super().__init__(*_resnet_trunk(net, cifar_stem), arch=arch, cifar_stem=cifar_stem)


def _resnet_trunk(net: torchvision.models.ResNet, cifar_stem: bool) -> tuple[nn.Module, int]:
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def is_resnet_arch(arch: str) -> bool:
    """Whether `arch` names a torchvision ResNet (the only family the CIFAR stem applies to)."""
    return arch.startswith(("resnet", "wide_resnet", "resnext"))


def layer4_input_side(arch: str, image_size: int, cifar_stem: bool | None) -> int | None:
    """Side of the map a ResNet's layer 4 receives (None for other backbones): the ImageNet stem and layers 2-3
    halve the side four times (rounding up), the CIFAR stem twice."""
    if not is_resnet_arch(arch):
        return None
    return math.ceil(image_size / (4 if uses_cifar_stem(arch, image_size, cifar_stem) else 16))


def uses_cifar_stem(arch: str, image_size: int, cifar_stem: bool | None) -> bool:
    """`cifar_stem=None` picks the small-image stem for ResNets on inputs of at most 64 px; other backbones never have it."""
    if not is_resnet_arch(arch):
        if cifar_stem:
            raise UserError(f"--cifar-stem applies to torchvision ResNets only, not to --arch {arch}")
        return False
    return image_size <= SMALL_IMAGE_MAX_SIZE if cifar_stem is None else cifar_stem


def build_encoder(arch: str, image_size: int, cifar_stem: bool | None = None, *, zero_init_residual: bool = False,
                  in_channels: int = RGB) -> Encoder:
    """The encoder `--arch` names: a torchvision ResNet (CIFAR stem as `uses_cifar_stem` says), any other torchvision
    classification model, or `timm:NAME`, all with random weights and a first convolution for `in_channels`.
    `zero_init_residual`: the last BN of every residual block starts with scale 0, so each block starts as the
    identity (the official SimCLR code's option; torchvision's `zero_init_residual`); ResNets only."""
    stem = uses_cifar_stem(arch, image_size, cifar_stem)
    if zero_init_residual and not is_resnet_arch(arch):
        raise UserError(f"--zero-init-residual applies to torchvision ResNets only, not to --arch {arch}")
    if arch.startswith(TIMM_PREFIX):
        net, feature_dim = _timm_backbone(arch[len(TIMM_PREFIX):], image_size)
    else:
        net, feature_dim = _torchvision_backbone(arch, image_size, stem, zero_init_residual)
    set_in_channels(net, in_channels)
    if not is_resnet_arch(arch) and image_size <= SMALL_IMAGE_MAX_SIZE and (arch, image_size) not in _noted:
        _noted.add((arch, image_size))
        print(f"torchclr: note: --arch {arch} keeps its ImageNet stem, which downsamples {image_size} px images to a few "
              "pixels; the CIFAR stem is for ResNets only", file=sys.stderr)
    return Encoder(net, feature_dim, arch, stem, in_channels=in_channels)


def _torchvision_backbone(arch: str, image_size: int, cifar_stem: bool, zero_init_residual: bool = False) -> tuple[nn.Module, int]:
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise UserError(f"--arch {arch!r} is neither a torchvision classification model (e.g. resnet50, "
                        "mobilenet_v3_small, convnext_tiny, vit_b_16) nor timm:NAME")
    options = {"image_size": image_size} if arch.startswith("vit_") else {}
    if arch in ("googlenet", "inception_v3"):
        options.update(aux_logits=False, init_weights=True)
    if zero_init_residual:
        options["zero_init_residual"] = True
    net = torchvision.models.get_model(arch, weights=None, **options)
    if isinstance(net, torchvision.models.ResNet):
        return _resnet_trunk(net, cifar_stem)
    return net, _drop_classifier(net, arch)


def _drop_classifier(net: nn.Module, arch: str) -> int:
    """Cut the classifier at its first Linear layer (keeping the norm/flatten before it); returns h's size."""
    for name in _CLASSIFIER_NAMES:
        head = getattr(net, name, None)
        if isinstance(head, nn.Linear):
            setattr(net, name, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            layers = list(head)
            first = next((i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)), None)
            if first is not None:
                kept = [layer for layer in layers[:first] if not isinstance(layer, nn.Dropout)]
                setattr(net, name, nn.Sequential(*kept) if kept else nn.Identity())
                return layers[first].in_features
    raise UserError(f"--arch {arch}: cannot find its classifier layer to remove (looked for {', '.join(_CLASSIFIER_NAMES)})")


def _timm_backbone(name: str, image_size: int) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError:
        raise UserError(f"--arch timm:{name} needs timm: pip install 'torchclr[timm]'") from None
    if not timm.is_model(name):
        raise UserError(f"--arch timm:{name}: timm has no model {name!r} (see timm.list_models())")
    try:  # ViTs and other fixed-size models take the input size; convolutional nets refuse the argument
        net = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
    except TypeError:
        net = timm.create_model(name, pretrained=False, num_classes=0)
    return net, int(net.num_features)


def _dry_feature_dim(module: nn.Module, image_size: int, in_channels: int, what: str) -> int:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(1, in_channels, image_size, image_size))
    module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(f"{what} must map [B, {in_channels}, {image_size}, {image_size}] images to features [B, d], "
                        f"got {type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    return out.shape[1]
