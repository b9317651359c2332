"""The exported backbone in torchvision's detection and segmentation models (issue 21 item 4, docs/transfer.md):
the state dict `export --format torchvision` writes fits their ResNet body key for key and gives the encoder's
own feature maps there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from carry_fixtures import trained_run  # noqa: F401 (a fixture)
from safetensors.torch import load_file
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.segmentation.fcn import FCN, FCNHead

from torchclr.export import export
from torchclr.pretrained import load_encoder


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    return export(trained_run / "encoder.safetensors", "torchvision", tmp_path_factory.mktemp("transfer") / "encoder.safetensors").path


def _layer4(trained_run: Path, images: torch.Tensor) -> torch.Tensor:  # noqa: F811
    """The trained encoder's own layer-4 map: what the detector's and the segmenter's body must give."""
    encoder = load_encoder(trained_run / "encoder.safetensors").encoder
    with torch.no_grad():
        return IntermediateLayerGetter(encoder.net, {"layer4": "out"})(images)["out"]


def test_faster_rcnn_on_exported_weights(exported: Path, trained_run: Path) -> None:  # noqa: F811
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    loaded = backbone.body.load_state_dict(load_file(str(exported)), strict=False)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []  # the export holds no fc, the body wants none
    detector = FasterRCNN(backbone, num_classes=3, image_mean=[0.0] * 3, image_std=[1.0] * 3,  # torchclr's input: [0, 1]
                          min_size=64, max_size=64).eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        found = detector([image])[0]
        body = backbone.body(image[None])["3"]  # FrozenBatchNorm2d: the running statistics, as the encoder in eval mode
    assert set(found) == {"boxes", "labels", "scores"} and found["boxes"].shape[1] == 4
    assert torch.allclose(body, _layer4(trained_run, image[None]), atol=1e-5)


def test_segmentation_on_exported_weights(exported: Path, trained_run: Path) -> None:  # noqa: F811
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    del net.fc
    net.load_state_dict(load_file(str(exported)))  # strict: every key of the body, and nothing else
    model = FCN(IntermediateLayerGetter(net, {"layer4": "out"}), FCNHead(512, 5)).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model(images)["out"].shape == (2, 5, 64, 64)
        assert torch.allclose(model.backbone(images)["out"], _layer4(trained_run, images), atol=1e-5)


def test_timm_state_dict_loads_into_timm(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from torchclr.config import PretrainConfig
    from torchclr.errors import UserError
    from torchclr.models import build_simclr
    from torchclr.pretrained import save_encoder

    config = PretrainConfig(arch="timm:resnet10t", image_size=32, in_channels=2, proj_dim=16)
    save_encoder(tmp_path / "encoder.safetensors", build_simclr(config.arch, 32, None, "mlp", 2, 16, in_channels=2), config)
    done = export(tmp_path / "encoder.safetensors", "timm", tmp_path / "net.safetensors")
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=2)
    net.load_state_dict(load_file(str(done.path)))  # strict: timm's own keys, nothing missing
    images = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(net.eval()(images), load_encoder(tmp_path / "encoder.safetensors").encoder(images), atol=1e-5)
    assert "in_chans=2" in done.description.read_text()
    with pytest.raises(UserError, match="--format torchvision needs a torchvision --arch"):
        export(tmp_path / "encoder.safetensors", "torchvision", tmp_path / "tv.safetensors")
