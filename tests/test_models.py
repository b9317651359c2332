from __future__ import annotations

import pytest
import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.models import build_encoder, build_simclr, projection_head


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_encoder_gives_pooled_features_without_classifier(arch: str, dim: int) -> None:
    encoder = build_encoder(arch, image_size=32)
    assert encoder.feature_dim == dim and isinstance(encoder.net.fc, nn.Identity)
    assert encoder.eval()(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_cifar_stem_is_automatic_for_small_images() -> None:
    small, large = build_encoder("resnet18", 32), build_encoder("resnet18", 96 + 32)
    assert small.cifar_stem and small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, nn.Identity)
    assert not large.cifar_stem and large.net.conv1.kernel_size == (7, 7)
    assert not build_encoder("resnet18", 32, cifar_stem=False).cifar_stem
    # The small-image stem keeps a 4x4 map before pooling at 32 px instead of 1x1.
    trunk = nn.Sequential(*list(small.net.children())[:-2])
    assert trunk.eval()(torch.rand(1, 3, 32, 32)).shape[-1] == 4


def test_heads_follow_the_paper() -> None:
    assert isinstance(projection_head("none", 512), nn.Identity)
    linear = projection_head("linear", 512, 128)
    assert [type(m) for m in linear] == [nn.Linear, nn.BatchNorm1d]
    mlp = projection_head("mlp", 512, 128, num_layers=3)
    widths = [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)]
    assert widths == [(512, 512), (512, 512), (512, 128)]
    assert sum(isinstance(m, nn.ReLU) for m in mlp) == 2 and not isinstance(mlp[-1], nn.ReLU)
    assert mlp(torch.rand(4, 512)).shape == (4, 128)


def test_simclr_returns_h_and_z() -> None:
    model = build_simclr("resnet18", 32, None, "mlp", 2, 64)
    h, z = model(torch.rand(4, 3, 32, 32))
    assert h.shape == (4, 512) and z.shape == (4, 64)


@pytest.mark.parametrize("call", [
    lambda: build_encoder("no_such_net", 32),
    lambda: projection_head("deep", 512),
    lambda: projection_head("mlp", 512, num_layers=1),
])
def test_unknown_choices_are_user_errors(call) -> None:
    with pytest.raises(UserError):
        call()


@pytest.mark.parametrize(("cifar_stem", "size"), [(False, 16), (False, 17), (False, 32), (False, 48), (True, 4), (True, 5), (True, 16)])
def test_layer4_input_side_is_what_layer4_receives(cifar_stem: bool, size: int) -> None:
    from torchclr.models.encoders import layer4_input_side

    encoder = build_encoder("resnet18", size, cifar_stem).eval()
    seen: list[int] = []
    layer4 = next(module for name, module in encoder.named_modules() if name.endswith("layer4"))
    layer4.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[-1]))
    with torch.no_grad():
        encoder(torch.zeros(1, 3, size, size))
    assert seen == [layer4_input_side("resnet18", size, cifar_stem)]


def test_bf16_on_the_cpu_falls_back_to_fp32_where_layer4_sees_a_1x1_map() -> None:
    """PyTorch 2.14's bf16 weight gradient of a strided conv on a 1x1 input reads uninitialised memory (NaN in
    about one process in five at 16 px with the ImageNet stem), so such runs train in fp32."""
    from torchclr.config import PretrainConfig
    from torchclr.runtime import training_dtype

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    tiny = PretrainConfig(image_size=16, cifar_stem=False)
    assert training_dtype(bf16, cpu, tiny) is None
    assert training_dtype(bf16, cpu, PretrainConfig(image_size=32, cifar_stem=False)) is bf16
    assert training_dtype(bf16, torch.device("cuda"), tiny) is bf16
    assert training_dtype(None, cpu, tiny) is None
    staged = PretrainConfig(image_size=48, cifar_stem=False, resolution_schedule="16@0,48@0.5")
    assert training_dtype(bf16, cpu, staged) is None
    # the stem is the model's, chosen at the final size: ImageNet at 128 px, so 16 px views give layer 4 a 1x1 map
    assert training_dtype(bf16, cpu, PretrainConfig(image_size=128, resolution_schedule="16@0,128@0.5")) is None
