"""Checkpoints as safetensors files: tensors plus JSON metadata, written atomically, loaded without pickle.

A training checkpoint holds the model, the optimiser state, the peak learning rate, every RNG state and the
step, so `--resume` continues bit-for-bit (the schedule is a function of the step). Checkpoints written before
0.3 kept a LambdaLR state instead of the peak lr; they resume exactly too (`_saved_peak_lr`). Loading never
unpickles anything, so a checkpoint from a stranger cannot run code; a file from another architecture is refused
with a message naming both.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from torchclr.errors import UserError
from torchclr.guard import all_finite
from torchclr.writer import BackgroundWrites, bytes_writer, remove_stale_temporaries as remove_stale_writes, replace_file

FORMAT = "torchclr-checkpoint-v1"
MAX_HEADER_BYTES = 16 << 20  # torchclr's own headers are a few KiB; a larger one is not ours (or is hostile)
REQUIRED_KEYS = {"training": ("model", "config", "epoch", "step", "optimizer", "rng"),
                 "encoder": ("model", "config")}


class NonFiniteCheckpoint(UserError):
    """A checkpoint would hold NaN or infinity: it is not written, so the last one on disk stays good."""


def save_atomically(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path, *,
                    writes: BackgroundWrites | None = None) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a crash never leaves half a checkpoint.

    Every floating tensor is checked first (a non-finite one is refused), and a full disk is one line naming
    the path, with whatever was at `path` before left intact. With `writes`, the file is serialised now and written
    in its thread (`writes.wait()` says when it is on disk).
    """
    path = Path(path)
    floating = {key: value for key, value in tensors.items() if value.is_floating_point()}
    if not all_finite(list(floating.values())):
        bad = next(key for key, value in floating.items() if not torch.isfinite(value).all())
        raise NonFiniteCheckpoint(f"refusing to write checkpoint {path}: tensor {bad} holds NaN or infinity")
    # a copy of this moment's values (training changes them in place while a background write serialises them)
    snapshot = {key: value.detach().to("cpu", memory_format=torch.contiguous_format, copy=writes is not None)
                for key, value in tensors.items()}
    size = sum(value.numel() * value.element_size() for value in snapshot.values())
    with _one_line_errors(path, size):
        path.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(path.parent, size, f"checkpoint {path}")
    metadata_text = {"format": FORMAT, "json": json.dumps(metadata)}
    if writes is None:
        _write(path, snapshot, metadata_text)
    else:
        writes.submit(lambda: _write(path, snapshot, metadata_text))


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    data = save(tensors, metadata=metadata)
    with _one_line_errors(path, len(data)):
        replace_file(path, bytes_writer(data))


@contextmanager
def _one_line_errors(path: Path, size: int) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device to write checkpoint {path} ({size / 2**20:.1f} MiB); "
                            "the previous checkpoint is intact: free some space and continue with --resume") from None
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err}") from None


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Refuse early, naming `what`, when `folder`'s file system has less room than `needed_bytes` (+5%)."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes * 1.05:
        raise UserError(f"not enough free space in {folder} for {what}: needs about {needed_bytes / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB free")


def estimated_training_bytes(model: nn.Module, optimizer_name: str) -> int:
    """About what a training checkpoint of `model` takes: the weights plus the optimiser's per-parameter slots
    (momentum for lars/sgd, two moments for adamw)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + params * (2 if optimizer_name == "adamw" else 1)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoints whose writer was killed (only the writer's naming)."""
    return remove_stale_writes(folder, "*.safetensors")


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a torchclr checkpoint; anything else (missing, truncated, foreign, malformed metadata) is a
    UserError naming the file. The header's size is checked before safetensors parses it."""
    return _read(Path(path), tensors=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata alone (no tensor is read), checked as `load` checks it."""
    return _read(Path(path), tensors=False)[1]


def _read(path: Path, *, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
        if len(prefix) == 8 and struct.unpack("<Q", prefix)[0] > MAX_HEADER_BYTES:
            raise UserError(f"checkpoint {path} is not a readable safetensors file: its header claims "
                            f"{struct.unpack('<Q', prefix)[0]} bytes (a torchclr checkpoint's is under {MAX_HEADER_BYTES >> 20} MiB)")
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            found = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RecursionError) as err:
        raise UserError(f"checkpoint {path} is not a readable safetensors file: {err}") from None
    if header.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} was not written by torchclr (format {str(header.get('format'))[:40]!r})")
    return found, _metadata(header.get("json"), path)


def _metadata(text: Any, path: Path) -> dict[str, Any]:
    """The JSON metadata, refused in one line unless it is an object with the keys its kind needs."""
    try:
        meta = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as err:
        raise UserError(f"checkpoint {path} has metadata that is not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} has metadata that is not a JSON object")
    missing = [key for key in REQUIRED_KEYS.get(meta.get("kind"), ()) if key not in meta]  # type: ignore[arg-type]
    if missing:
        raise UserError(f"checkpoint {path} lacks metadata {', '.join(missing)}")
    model = meta.get("model", {"arch": None, "cifar_stem": None})
    if not isinstance(model, dict) or not {"arch", "cifar_stem"} <= model.keys() or not isinstance(meta.get("config", {}), dict):
        raise UserError(f"checkpoint {path} has malformed metadata (model must name arch and cifar_stem; config must be an object)")
    return meta


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slot in state["state"].items():
        for key, value in slot.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, slot in meta["scalars"].items():
        state.setdefault(int(index), {}).update(slot)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(augment_generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    if augment_generator is not None:
        tensors["rng.augment"] = augment_generator.get_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    meta = {"python": _to_json(random.getstate()), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], augment_generator: torch.Generator | None) -> None:
    """Every RNG as saved; the states of GPUs this machine lacks (a run resumed on fewer GPUs) are left out."""
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        present = torch.cuda.device_count()
        for key, state in tensors.items():
            if key.startswith("rng.cuda.") and int(key.rsplit(".", 1)[1]) < present:
                torch.cuda.set_rng_state(state, int(key.rsplit(".", 1)[1]))
    if augment_generator is not None and "rng.augment" in tensors:
        set_generator_state(augment_generator, tensors["rng.augment"])
    random.setstate(_to_tuple(meta["python"]))
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def set_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restore a generator, unless the state is another kind's (a GPU generator's state resumed on the CPU or the
    reverse): the generator then keeps its fresh seed rather than failing the resume."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def save_training(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    peak_lr: float,
    augment_generator: torch.Generator | None,
    info: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    *,
    writes: BackgroundWrites | None = None,
) -> None:
    """Everything `--resume` needs; `info` carries the config, the architecture and the epoch/step,
    `extra_tensors` whatever else the caller restores itself (e.g. each process's RNG state); `writes`: see
    `save_atomically`."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_meta = rng_state(augment_generator)
    metadata = dict(info)
    metadata.update(
        kind="training",
        optimizer=optim_meta,
        schedule={"peak_lr": peak_lr},
        rng=rng_meta,
        scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    )
    save_atomically({**tensors, **optim_tensors, **rng_tensors, **(extra_tensors or {})}, metadata, path, writes=writes)


def model_tensors(tensors: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, described_as: str) -> None:
    """`load_state_dict`, with a mismatch explained in one line instead of a wall of key names."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            key = wrong_shape[0]
            details.append(f"{len(wrong_shape)} of another shape (e.g. {key}: {tuple(state[key].shape)} vs {tuple(expected[key].shape)})")
        raise UserError(f"checkpoint {path} does not fit {described_as}: tensors " + "; ".join(details))
    model.load_state_dict(state)


def restore_training(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    augment_generator: torch.Generator | None,
    scaler: torch.amp.GradScaler | None = None,
    path: str | Path = "",
) -> float:
    """Optimiser, scaler and RNG states; returns the run's peak learning rate. State that does not fit them is a
    UserError naming `path`."""
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        peak_lr = _saved_peak_lr(meta)
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        restore_rng_state(tensors, meta["rng"], augment_generator)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} holds a malformed training state ({type(err).__name__}: {str(err)[:200]})") from None
    _match_parameter_layout(optimizer)
    return peak_lr


def _saved_peak_lr(meta: dict[str, Any]) -> float:
    """The peak lr the run was scheduled with; a pre-0.3 checkpoint kept it as its LambdaLR's `base_lrs` (every
    group had the same), which a resume restored, so it still wins over the command line's --lr."""
    if "schedule" in meta:
        return float(meta["schedule"]["peak_lr"])
    return float(meta["scheduler"]["base_lrs"][0])


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (momentum, ...) its parameter's memory format again.

    The file holds contiguous tensors and `load_state_dict` keeps them so: channels_last convolutions would then
    update from contiguous buffers, a layout conversion on every step.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
