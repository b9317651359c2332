"""`--init`: start the encoder from known weights instead of random ones, so that a run (and its evaluation) can
answer "did SSL beat the start?".

`imagenet` takes torchvision's default weights for `--arch` from the local torch hub cache, `timm` the pretrained
weights of `--arch timm:NAME` (NAME's tag, else timm's default one) from the local Hugging Face hub cache, where timm
keeps them (either fetched only with --download); a PATH takes any state dict (.pth / .pt) or safetensors file whose
keys are torchvision's or timm's (`conv1.weight`) or torchclr's (`encoder.net.conv1.weight` in encoder.safetensors,
`model.encoder.net.` in a training checkpoint). The classifier of a torchvision or timm file is dropped (the encoder
has none), and an encoder of `--in-channels` N takes the file's 3-channel first convolution adapted
(`torchclr.models.channels.adapt_rgb_weight`); anything else that does not fit is one line.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from torchclr.errors import UserError
from torchclr.models.channels import RGB, adapt_rgb_weight, first_conv
from torchclr.models.encoders import CUSTOM_ARCH, TIMM_PREFIX, Encoder

_PREFIXES = ("model.encoder.net.", "encoder.net.", "net.", "")  # torchclr's checkpoints, encoder files, then torchvision
_CLASSIFIERS = ("fc.", "classifier.", "heads.", "head.")
_SHOWN = 3  # mismatching keys named in the error line
_TIMM_HUB_FILE = "pytorch_model.bin"  # the hub file timm loads when a model names none (model.safetensors preferred)
_TIMM_HUB_FILES = ("model.safetensors", _TIMM_HUB_FILE)  # looked for in the cache in timm's order


def load_initial_weights(encoder: Encoder, source: str, *, download: bool = False) -> str:
    """Load `source` ('imagenet', 'timm' or a file) into `encoder.net`; returns the line that says what was loaded."""
    skip: set[str] = set()
    if source == "imagenet":
        state, where = _torchvision_weights(encoder.arch, download)
        # the CIFAR stem's 3x3 conv1 cannot take ImageNet's 7x7 one: it stays random, the rest is loaded
        skip = {"conv1.weight"} if encoder.cifar_stem else set()
    elif source == "timm":
        state, where = _timm_weights(encoder.arch, download)
    else:
        state, where = _file_weights(Path(source)), f"--init {source}"
    loaded = match_state(encoder, state, where, skip)
    kept = " (conv1 stays random: the CIFAR stem's 3x3 conv has no ImageNet weights)" if skip else ""
    adapted = (f" (the first convolution's RGB weights averaged for {encoder.in_channels} channels)"
               if encoder.in_channels != RGB and _stem_key(encoder) in loaded else "")
    encoder.net.load_state_dict(loaded, strict=not skip)
    return f"init: encoder weights from {where}{kept}{adapted}"


def _stem_key(encoder: Encoder) -> str:
    return f"{first_conv(encoder.net)[0]}.weight"


def _adapt_stem(encoder: Encoder, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`found` with a 3-channel first convolution adapted to an encoder of other `in_channels`."""
    key = _stem_key(encoder) if encoder.in_channels != RGB else None
    if key is None or key not in found or found[key].ndim != 4 or found[key].shape[1] != RGB:
        return found
    return {**found, key: adapt_rgb_weight(found[key], encoder.in_channels)}


def match_state(encoder: Encoder, state: dict[str, torch.Tensor], where: str, skip: set[str]) -> dict[str, torch.Tensor]:
    """`state` with the key prefix that fits `encoder.net` removed and the classifier dropped; a file that does not
    fit (another architecture, another stem) is one UserError listing the mismatches."""
    target = encoder.net.state_dict()
    prefix = max(_PREFIXES, key=lambda p: sum(k[len(p):] in target for k in state if k.startswith(p)))
    found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    found = {k: v for k, v in found.items() if not (k not in target and k.startswith(_CLASSIFIERS)) and k not in skip}
    found = _adapt_stem(encoder, found)
    missing = [k for k in target if k not in found and k not in skip]
    unexpected = [k for k in found if k not in target]
    shapes = [f"{k} {list(v.shape)} vs {list(target[k].shape)}" for k, v in found.items() if k in target and v.shape != target[k].shape]
    problems = [f"{len(keys)} {what} ({', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape (file vs model)", shapes)) if keys]
    if problems:
        raise UserError(f"{where} does not fit --arch {encoder.arch}{' with the CIFAR stem' if encoder.cifar_stem else ''}: "
                        f"{'; '.join(problems)} keys")
    return found


def _file_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"--init {path}: no such file (give imagenet, timm or a state dict / safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:  # damaged or foreign
        raise UserError(f"--init {path}: cannot read it as a state dict: {_first_line(err)}") from None
    for key in ("state_dict", "model"):  # common wrappers of a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--init {path}: holds no state dict of tensors")
    return state


def _first_line(err: BaseException) -> str:
    """An exception as one line of an error message (some libraries' messages run over several)."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _wrong_source(source: str, arch: str) -> UserError:
    """The one line for --init imagenet / timm with an --arch whose weights come from the other library, or from none."""
    library = {"imagenet": "torchvision", "timm": "timm"}
    other = "timm" if arch.startswith(TIMM_PREFIX) else "imagenet"
    has = ("has none (give a weights file)" if arch == CUSTOM_ARCH
           else f"is a {library[other]} model (use --init {other}, or give a weights file)")
    return UserError(f"--init {source} takes {library[source]}'s weights; --arch {arch} {has}")


def _torchvision_weights(arch: str, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    import torchvision

    if arch.startswith(TIMM_PREFIX) or arch == CUSTOM_ARCH:
        raise _wrong_source("imagenet", arch)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    where = f"torchvision's {weights} ({cached})"
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True), where
    if not download:
        raise UserError(f"--init imagenet: torchvision's {weights} weights are not in the torch hub cache: {cached} is "
                        "missing; copy the file there (TORCH_HOME moves the cache) or add --download to fetch it")
    return weights.get_state_dict(progress=False), where


def _timm_weights(arch: str, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    """timm's pretrained weights for `arch` (timm:NAME), read from the Hugging Face hub cache without any network
    access, so that an offline run fails at once with what to copy where rather than waiting on a download."""
    if not arch.startswith(TIMM_PREFIX):
        raise _wrong_source("timm", arch)
    import huggingface_hub
    import timm

    name = arch[len(TIMM_PREFIX):]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # a tag timm does not know for this model
        raise UserError(f"--init timm: {err}") from None
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(f"--init timm: timm has no Hugging Face hub weights for {name} (give a weights file)")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _TIMM_HUB_FILES
    for file in files:
        cached = huggingface_hub.try_to_load_from_cache(repo, file, revision=revision or None)
        if isinstance(cached, str):  # else None, or a marker that the hub has no such file
            return _file_weights(Path(cached)), f"timm's {cfg.hf_hub_id} ({cached})"
    cache = huggingface_hub.constants.HF_HUB_CACHE
    if not download:
        raise UserError(f"--init timm: timm's {name} weights are not in the Hugging Face hub cache: {' or '.join(files)} "
                        f"of {repo} is missing under {cache}; copy it there (HF_HUB_CACHE or HF_HOME moves the cache) "
                        "or add --download to fetch it")
    try:
        state = timm.models.load_state_dict_from_hf(cfg.hf_hub_id, cfg.hf_hub_filename or _TIMM_HUB_FILE, cache_dir=cache)
    except OSError as err:  # no network, no such repo or file: huggingface_hub's errors are OSErrors
        raise UserError(f"--init timm --download: cannot fetch {repo}: {_first_line(err)}") from None
    return state, f"timm's {cfg.hf_hub_id} (fetched into {cache})"


def initial_encoder(config: Any, checkpoint: str | Path, *, download: bool = False) -> Encoder:
    """The encoder as the run of `config` (its PretrainConfig) began: its --init weights; a run without --init began
    from random weights, which --compare-random already shows."""
    from torchclr.models import build_encoder

    if not config.init:
        raise UserError(f"--compare init: {checkpoint} comes from a run without --init (it began from random weights: "
                        "see --compare-random)")
    encoder = build_encoder(config.arch, config.image_size, config.cifar_stem, in_channels=config.in_channels)
    load_initial_weights(encoder, config.init, download=download)
    return encoder
