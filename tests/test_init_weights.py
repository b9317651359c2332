"""--init: a torchvision or torchclr weights file becomes the encoder's start; misfits and a missing cache are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from torchclr.errors import UserError
from torchclr.init_weights import load_initial_weights
from torchclr.models import build_encoder


def _seeded_resnet18() -> torchvision.models.ResNet:
    torch.manual_seed(7)
    return torchvision.models.resnet18(weights=None).eval()


def test_a_torchvision_file_gives_that_networks_h(tmp_path: Path) -> None:
    reference = _seeded_resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # with its fc, as torchvision writes it
    encoder = build_encoder("resnet18", 32, cifar_stem=False)
    line = load_initial_weights(encoder, str(path))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.equal(encoder.eval()(images), reference(images))
    assert str(path) in line


def test_torchclr_prefixed_safetensors_load_the_same(tmp_path: Path) -> None:
    reference = _seeded_resnet18()
    path = tmp_path / "encoder.safetensors"
    save_file({f"encoder.net.{k}": v.contiguous() for k, v in reference.state_dict().items() if not k.startswith("fc.")}, str(path))
    encoder = build_encoder("resnet18", 32, cifar_stem=False)
    load_initial_weights(encoder, str(path))
    assert torch.equal(encoder.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_a_file_for_another_architecture_is_one_line_listing_the_mismatches(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(UserError) as err:
        load_initial_weights(build_encoder("resnet18", 32, cifar_stem=False), str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "resnet18" in message and "unexpected" in message
    assert "layer1.2." in message  # resnet34 has a third block in layer 1
    with pytest.raises(UserError, match="another shape.*conv1.weight"):  # the 7x7 stem into the CIFAR stem
        load_initial_weights(build_encoder("resnet18", 32, cifar_stem=True), str(tmp_path / "resnet34.pth").replace("34", "34"))


def test_imagenet_offline_names_the_missing_file_and_where_it_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError) as err:
        load_initial_weights(build_encoder("resnet18", 32, cifar_stem=False), "imagenet")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints") in message and "resnet18-" in message
    assert "--download" in message


def test_compare_init_puts_the_starting_weights_beside_the_trained_ones(tmp_path: Path, tiny_folder: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """An encoder file written straight from its --init weights: the two rows must score the same."""
    from torchclr.cli import main
    from torchclr.config import PretrainConfig
    from torchclr.models import build_simclr
    from torchclr.pretrained import save_encoder

    weights = tmp_path / "start.pth"
    torch.save(_seeded_resnet18().state_dict(), weights)
    config = PretrainConfig(data=str(tiny_folder), image_size=32, cifar_stem=False, init=str(weights))
    model = build_simclr("resnet18", 32, False, "mlp", 2, 128)
    load_initial_weights(model.encoder, str(weights))
    save_encoder(tmp_path / "encoder.safetensors", model, config)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "encoder.safetensors"), "--protocol", "knn", "--knn-k", "5",
                 "--no-compare-random", "--compare", "init", "--device", "cpu"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("SimCLR", "initial weights"))]
    assert len(rows) == 2 and rows[0][-2:] == rows[1][-2:]
