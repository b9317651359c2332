"""--init: a torchvision, timm or torchclr weights file becomes the encoder's start; misfits and a missing cache are one line."""

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


# ---- --init timm: timm's weights from the Hugging Face hub cache, offline ----

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache in tmp_path, made the one huggingface_hub reads (it reads HF_HUB_CACHE from
    the environment when it is imported, so the constant itself is moved)."""
    pytest.importorskip("timm")
    import huggingface_hub

    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache(hub: Path, repo: str, state: dict[str, torch.Tensor], file: str = "model.safetensors") -> Path:
    """`state` as `file` of the hub repo `repo` in the cache `hub`, laid out as huggingface_hub lays it out."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(_COMMIT)
    if file.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / file))
    else:
        torch.save(state, snapshot / file)
    return snapshot / file


def _seeded_timm(name: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(7)
    return timm.create_model(name, pretrained=False).eval()  # with its classifier, as timm's hub files hold it


def _pre_logits(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm's own pooled features (its public forward_features / forward_head): the reference for h."""
    with torch.no_grad():
        return net.forward_head(net.forward_features(images), pre_logits=True)


def test_timm_weights_from_the_hub_cache_give_that_networks_h(hub: Path) -> None:
    reference = _seeded_timm("resnet10t")
    cached = _cache(hub, "timm/resnet10t.c3_in1k", reference.state_dict())
    encoder = build_encoder("timm:resnet10t", 32)
    line = load_initial_weights(encoder, "timm")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(encoder.eval()(images), _pre_logits(reference, images))
    assert "timm/resnet10t.c3_in1k" in line and str(cached) in line


def test_a_pretrained_tag_picks_its_repo_and_a_missing_one_is_one_line(hub: Path) -> None:
    """timm:resnet18.tv_in1k reads timm/resnet18.tv_in1k (here as pytorch_model.bin, timm's other file name), while
    timm:resnet18 wants timm's default tag, which the cache lacks."""
    reference = _seeded_timm("resnet18")
    _cache(hub, "timm/resnet18.tv_in1k", reference.state_dict(), "pytorch_model.bin")
    encoder = build_encoder("timm:resnet18.tv_in1k", 32)
    assert "timm/resnet18.tv_in1k" in load_initial_weights(encoder, "timm")
    assert torch.equal(encoder.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(UserError) as err:
        load_initial_weights(build_encoder("timm:resnet18", 32), "timm")
    message = str(err.value)
    assert "\n" not in message and "timm/resnet18.a1_in1k" in message and "model.safetensors" in message
    assert str(hub) in message and "HF_HUB_CACHE" in message and "--download" in message


def test_init_timm_and_init_imagenet_each_refuse_the_other_librarys_arch(hub: Path) -> None:
    with pytest.raises(UserError) as timm_on_torchvision:
        load_initial_weights(build_encoder("resnet18", 32, cifar_stem=False), "timm")
    with pytest.raises(UserError) as imagenet_on_timm:
        load_initial_weights(build_encoder("timm:resnet10t", 32), "imagenet")
    for err, use in ((timm_on_torchvision, "--init imagenet"), (imagenet_on_timm, "--init timm")):
        assert "\n" not in str(err.value) and use in str(err.value)


def test_timm_weights_of_another_architecture_are_one_line_listing_the_mismatches(hub: Path) -> None:
    _cache(hub, "timm/resnet10t.c3_in1k", _seeded_timm("resnet14t").state_dict())
    with pytest.raises(UserError) as err:
        load_initial_weights(build_encoder("timm:resnet10t", 32), "timm")
    message = str(err.value)
    assert "\n" not in message and "timm/resnet10t.c3_in1k" in message and "unexpected" in message
    assert "layer1.0.bn3." in message  # resnet14t has bottleneck blocks, with a third conv and norm


def test_timm_weights_adapt_the_stem_for_one_channel(hub: Path) -> None:
    reference = _seeded_timm("resnet10t")
    _cache(hub, "timm/resnet10t.c3_in1k", reference.state_dict())
    gray = build_encoder("timm:resnet10t", 32, in_channels=1)
    assert "averaged for 1 channels" in load_initial_weights(gray, "timm")
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(gray.eval()(image), _pre_logits(reference, image.expand(-1, 3, -1, -1)), atol=1e-5)


def test_timm_download_goes_through_timm_and_a_failure_is_one_line(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    asked: list[str] = []
    reference = _seeded_timm("resnet10t")
    monkeypatch.setattr(timm.models, "load_state_dict_from_hf",
                        lambda repo, file, cache_dir: asked.append(repo) or reference.state_dict())
    encoder = build_encoder("timm:resnet10t", 32)
    assert "fetched" in load_initial_weights(encoder, "timm", download=True) and asked == ["timm/resnet10t.c3_in1k"]

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network\nsecond line")

    monkeypatch.setattr(timm.models, "load_state_dict_from_hf", offline)
    with pytest.raises(UserError, match=r"^--init timm --download: cannot fetch timm/resnet10t.c3_in1k: no network$"):
        load_initial_weights(encoder, "timm", download=True)


def test_compare_init_rebuilds_a_timm_start(hub: Path, tiny_folder: Path, capsys: pytest.CaptureFixture) -> None:
    from torchclr.cli import main
    from torchclr.config import PretrainConfig
    from torchclr.models import build_simclr
    from torchclr.pretrained import save_encoder

    _cache(hub, "timm/resnet10t.c3_in1k", _seeded_timm("resnet10t").state_dict())
    config = PretrainConfig(data=str(tiny_folder), arch="timm:resnet10t", image_size=32, init="timm")
    model = build_simclr("timm:resnet10t", 32, None, "mlp", 2, 128)
    load_initial_weights(model.encoder, "timm")
    save_encoder(hub.parent / "encoder.safetensors", model, config)
    assert main(["evaluate", "--checkpoint", str(hub.parent / "encoder.safetensors"), "--protocol", "knn", "--knn-k", "5",
                 "--no-compare-random", "--compare", "init", "--device", "cpu"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("SimCLR", "initial weights"))]
    assert len(rows) == 2 and rows[0][-2:] == rows[1][-2:]


@pytest.mark.slow
def test_pretrain_init_timm_end_to_end(hub: Path, tiny_folder: Path, capsys: pytest.CaptureFixture) -> None:
    """`torchclr pretrain --arch timm:NAME --init timm` offline from the cache, then `evaluate --compare init`."""
    from torchclr.cli import main

    _cache(hub, "timm/resnet10t.c3_in1k", _seeded_timm("resnet10t").state_dict())
    out = hub.parent / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--out-dir", str(out), "--arch", "timm:resnet10t", "--init", "timm",
                 "--epochs", "1", "--warmup-epochs", "0.5", "--batch-size", "16", "--knn-k", "5", "--no-progress", "--seed", "3"]) == 0
    assert "init: encoder weights from timm's timm/resnet10t.c3_in1k" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out / "encoder.safetensors"), "--protocol", "knn", "--knn-k", "5",
                 "--no-compare-random", "--compare", "init", "--device", "cpu"]) == 0
    assert any(line.startswith("initial weights (--init timm)") for line in capsys.readouterr().out.splitlines())
