from __future__ import annotations

import pytest
import torch
from torch import nn

from torchclr.errors import UserError
from torchclr.models import build_encoder, build_simclr, projection_head
from torchclr.models.heads import BatchNormNoShift


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
    assert [type(m) for m in linear] == [nn.Linear, BatchNormNoShift]
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


def test_head_last_batchnorm_has_no_learnable_shift() -> None:
    """The official code's last BN of the head has center=False: its shift starts at 0, no optimiser updates it,
    and the state dict keeps the keys an affine BN has."""
    from torchclr.models import projection_head
    from torchclr.optim import build_optimizer

    for kind in ("mlp", "linear"):
        head = projection_head(kind, 16, 8)
        last = head[-1]
        assert torch.equal(last.bias, torch.zeros(8)) and not last.bias.requires_grad and last.weight.requires_grad
        optimizer = build_optimizer(head, "lars", lr=1.0, weight_decay=1e-4, momentum=0.9)
        head(torch.randn(32, 16)).pow(2).sum().backward()
        optimizer.step()
        assert torch.equal(last.bias, torch.zeros(8)), kind
        assert set(head.state_dict()) == set(torch.nn.Sequential(*head[:-1], torch.nn.BatchNorm1d(8)).state_dict())


def test_head_loads_a_file_written_with_a_learnt_shift() -> None:
    """A head saved when the last BN's shift was learnt loads as it is and gives the same z."""
    from torchclr.models import projection_head

    old = projection_head("mlp", 16, 8)
    old[-1] = torch.nn.BatchNorm1d(8)  # the former head: an affine BN with a learnable shift
    with torch.no_grad():
        old[-1].bias.copy_(torch.linspace(-1, 1, 8))
    new = projection_head("mlp", 16, 8)
    new.load_state_dict(old.state_dict())
    old.eval(), new.eval()
    h = torch.randn(4, 16)
    assert torch.allclose(new(h), old(h))


@pytest.mark.parametrize("arch, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_starts_every_block_as_the_identity(arch: str, last_bn: str) -> None:
    from torchclr.models import build_encoder

    zeroed = build_encoder(arch, 32, zero_init_residual=True)
    plain = build_encoder(arch, 32)
    blocks = [m for m in zeroed.net.modules() if hasattr(m, last_bn) and hasattr(m, "conv1")]
    assert len(blocks) == {"resnet18": 8, "resnet50": 16}[arch]
    assert all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    assert all(torch.all(getattr(b, last_bn).weight == 1) for b in plain.net.modules()
               if hasattr(b, last_bn) and hasattr(b, "conv1"))


def test_zero_init_residual_is_a_config_option_for_resnets_only() -> None:
    from torchclr.cli import _build_parser
    from torchclr.config import resolve
    from torchclr.errors import UserError
    from torchclr.models import build_simclr

    args = _build_parser().parse_args(["pretrain", "--zero-init-residual"])
    assert resolve(args).zero_init_residual is True
    assert resolve(_build_parser().parse_args(["pretrain"])).zero_init_residual is False
    model = build_simclr("resnet18", 32, None, "mlp", 2, 128, zero_init_residual=True)
    assert torch.count_nonzero(model.encoder.net.layer1[0].bn2.weight) == 0
    with pytest.raises(UserError, match="--zero-init-residual applies to torchvision ResNets only"):
        build_simclr("mobilenet_v3_small", 32, None, "mlp", 2, 128, zero_init_residual=True)
