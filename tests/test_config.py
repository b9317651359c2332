from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from torchclr.config import PretrainConfig, add_arguments, load_yaml, resolve
from torchclr.errors import UserError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_then_yaml_then_command_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\ntemperature: 0.2\ncrop_scale: [0.2, 1.0]\nblur_p: null\n")
    config = resolve(_parse("--config", str(path), "--temperature", "0.3", "--no-channels-last"))
    assert config.epochs == 7 and config.temperature == 0.3 and config.crop_scale == (0.2, 1.0)
    assert config.channels_last is False and config.batch_size == PretrainConfig.batch_size


def test_presets_carry_the_paper_settings() -> None:
    imagenet = load_yaml("imagenet")
    assert imagenet["batch_size"] == 4096 and imagenet["optimizer"] == "lars" and imagenet["temperature"] == 0.1
    assert imagenet["lr"] * imagenet["batch_size"] / 256 == pytest.approx(4.8)
    assert imagenet["weight_decay"] == 1e-6 and imagenet["epochs"] == 100 and imagenet["warmup_epochs"] == 10
    cifar = load_yaml("cifar10")
    assert cifar["jitter_strength"] == 0.5 and cifar["blur_p"] == 0.0 and cifar["image_size"] == 32


@pytest.mark.parametrize("text, message", [
    ("epochs: 7\nbogus: 1\n", "unknown key 'bogus'"),
    ("epochs: many\n", "epochs must be an integer"),
    ("crop_scale: 0.5\n", "crop_scale must be a pair"),
    ("[1, 2]\n", "must be a mapping"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_yaml_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        resolve(_parse("--config", str(path)))
    assert "bad.yaml" in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--temperature", "-1"], "--temperature must be > 0"),
    (["--grayscale-p", "1.5"], "--grayscale-p must be a probability"),
    (["--config", "nonexistent.yaml"], "neither a preset"),
    (["--batch-size", "3.5"], "--batch-size must be an integer"),
])
def test_bad_options_are_user_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve(_parse(*argv))
