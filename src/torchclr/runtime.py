"""Where and how a torchclr process computes: the device, the autocast precision, seeding, DDP wrapping.

Shared by pretraining, evaluation, embedding, the report and the ablations, so that none of them imports the
training loop for a helper.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchclr import distributed
from torchclr.errors import UserError
from torchclr.models.encoders import layer4_input_side, uses_cifar_stem


def default_workers() -> int:
    """DataLoader worker processes: one core left to the main process, at most 8 (more rarely pays)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' and 'cuda' mean this process's GPU (torchrun's LOCAL_RANK; 0 in a single process); 'cuda:1' is taken as said."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (try cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch")
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"--device {name}: process {local_rank} on this machine has no GPU of its own "
                            f"({torch.cuda.device_count()} visible); start at most that many per machine")
        device = torch.device("cuda", local_rank)
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` does bf16 matrix work natively: a GPU that supports it, or a CPU with AVX-512 (BF16) or AMX,
    as oneDNN judges it. Elsewhere bf16 is emulated, many times slower than fp32 (seen here: a CPU with AVX2 only)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_dtype(dtype: torch.dtype | None | str, device: torch.device) -> torch.dtype | None:
    """An autocast dtype, with 'auto' meaning bf16 where it is native on `device` and fp32 (None) elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return dtype  # type: ignore[return-value]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of --precision (None: fp32, no autocast); 'auto' as `resolve_dtype` says; fp16 needs a
    grad scaler, so a GPU."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return resolve_dtype({"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision], device)


def training_dtype(dtype: torch.dtype | None, device: torch.device, config: Any) -> torch.dtype | None:
    """fp32 instead of bf16 on the CPU when a ResNet's layer 4 gets a 1x1 map (ImageNet stem at <= 16 px, CIFAR stem
    at <= 4 px, at any resolution stage or view size of `config`, a PretrainConfig): PyTorch 2.14's bf16 weight gradient of a
    strided conv on a 1x1 input reads uninitialised memory there (NaN or garbage, differing between processes;
    tests/test_models.py pins the fallback)."""
    schedule, views = config.resolution(), config.multi_crop()
    smallest = min(schedule.sizes) if schedule is not None else config.image_size
    smallest = min(group.size for group in views.groups) if views is not None else smallest  # the small views of --views
    stem = uses_cifar_stem(config.arch, config.image_size, config.cifar_stem)  # the model's, chosen at the final size
    if dtype != torch.bfloat16 or device.type != "cpu" or layer4_input_side(config.arch, smallest, stem) != 1:
        return dtype
    say(f"note: --precision bf16 on the CPU computes wrong gradients when layer 4 sees a 1x1 map ({smallest} px views); "
        "training in fp32")
    return None


def seed_everything(seed: int, deterministic: bool) -> None:
    """The one seeding convention: Python, NumPy and torch from `seed` (each process passes seed + rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def wrap_for_training(model: nn.Module, device: torch.device, *, sync_bn: bool, compile: bool) -> tuple[nn.Module, nn.Module]:
    """(the bare network, for checkpoints, the kNN monitor and export; the module a step calls).

    Under several processes: global BN (if `sync_bn`; paper section 2.2) and DDP, which starts every rank from rank
    0's weights and averages the gradients; then torch.compile if asked.
    """
    several = distributed.world_size() > 1
    if several and sync_bn:
        model = distributed.global_batchnorm(model, device)
    forward_model: nn.Module = model
    if several:
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, torch.compile(forward_model) if compile else forward_model


def say(line: str) -> None:
    """Print a line once per run: from the main process only."""
    if distributed.is_main_process():
        print(line, flush=True)
