"""torchclr under several processes (gloo, CPU): DDP + global BN reproduce the single-process step, gradient caching
composes with DDP, `torchclr pretrain` runs under torchrun and resumes, and a dead or stalled rank ends the others."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchclr import checkpoint, distributed
from torchclr.config import PretrainConfig
from torchclr.errors import UserError
from torchclr.gradcache import grad_cache_backward
from torchclr.loss import build_loss
from torchclr.models import SimCLR, projection_head

WORLD, IMAGES_PER_RANK, CHUNK = 2, 2, 1
CPU = torch.device("cpu")


def small_simclr() -> SimCLR:
    """A two-conv encoder with BatchNorm2d and torchclr's MLP head (BatchNorm1d), in float64."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                            nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SimCLR(encoder, projection_head("mlp", 8, 6)).double()


def full_views() -> tuple[torch.Tensor, torch.Tensor]:
    """Both views of the global batch; rank r holds images [r * IMAGES_PER_RANK, (r + 1) * IMAGES_PER_RANK)."""
    generator = torch.Generator().manual_seed(0)
    shape = (WORLD * IMAGES_PER_RANK, 3, 8, 8)
    return (torch.rand(shape, generator=generator, dtype=torch.float64),
            torch.rand(shape, generator=generator, dtype=torch.float64))


def embed_with(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda images: model(images)[1]


def loss_and_gradients(model: torch.nn.Module, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = build_loss("nt_xent", 0.5, 1.0)(embed_with(model)(torch.cat([first, second])))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    mine = slice(rank * IMAGES_PER_RANK, (rank + 1) * IMAGES_PER_RANK)
    first, second = (view[mine] for view in full_views())

    model = distributed.global_batchnorm(small_simclr(), CPU)
    ddp = DistributedDataParallel(model)
    loss, grads = loss_and_gradients(ddp, first, second)
    results = {"global_bn": (loss, grads, [b.clone() for b in model.buffers()])}

    model.eval()  # BN from running statistics: chunks are independent, so gradient caching is exact
    model.zero_grad()
    grad_cache_backward(ddp, embed_with(ddp), build_loss("nt_xent", 0.5, 1.0), first, second, CHUNK)
    results["grad_cache"] = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory, spawn_ranks: Callable[..., None]) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    spawn_ranks(worker, (str(out_dir),), WORLD, 90)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.fixture(scope="module")
def single_process() -> dict:
    """What the worker computes, in one process on the full batch with plain BN."""
    model = small_simclr()
    loss, grads = loss_and_gradients(model, *full_views())
    results = {"global_bn": (loss, grads, [b.clone() for b in model.buffers()])}
    results["grad_cache"] = loss_and_gradients(model.eval(), *full_views())[1]
    return results


@pytest.mark.slow
def test_ddp_with_global_bn_matches_one_process_on_the_full_batch(rank_results: list[dict], single_process: dict) -> None:
    """Loss (mean over ranks), parameter gradients and BN running statistics of 2 ranks x N = 1 process x 2N."""
    loss, grads, buffers = single_process["global_bn"]
    losses = torch.stack([r["global_bn"][0] for r in rank_results])
    torch.testing.assert_close(losses.mean(), loss, rtol=1e-5, atol=1e-5)
    for result in rank_results:
        _, rank_grads, rank_buffers = result["global_bn"]
        for got, want in zip(rank_grads, grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for got, want in zip(rank_buffers, buffers, strict=True):  # global BN statistics = full-batch BN's
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_grad_cache_under_ddp_matches_one_process_on_the_full_batch(rank_results: list[dict], single_process: dict) -> None:
    for result in rank_results:
        for got, want in zip(result["grad_cache"], single_process["grad_cache"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dist_timeout_must_be_positive() -> None:
    with pytest.raises(UserError, match="--dist-timeout"):
        PretrainConfig(dist_timeout=0).validate()


TINY = ["--image-size", "16", "--batch-size", "8", "--lr", "0.3", "--warmup-epochs", "0.5", "--knn-k", "5", "--no-progress", "--seed", "3"]


def _torchrun(*argv: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               "-m", "torchclr", "pretrain", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_pretrain_checkpoints_once_and_resumes_exactly(tmp_path: Path, few_images_folder: Path) -> None:
    """Rank 0 alone writes the run; resuming epoch 2 from epoch 1's checkpoint rewrites the same epoch-2 checkpoint,
    so every rank got its own state back (augmentation RNG included). Gradient caching and global BN are on."""
    out = tmp_path / "run"
    argv = ["--data", str(few_images_folder), "--out-dir", str(out), "--epochs", "2", "--grad-cache-chunk", "2",
            "--deterministic", *TINY]
    _torchrun(*argv)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0001.safetensors", "epoch-0002.safetensors"]
    first_run, meta = checkpoint.load(out / "checkpoints" / "epoch-0002.safetensors")
    assert not torch.equal(first_run["rng.augment.rank0"], first_run["rng.augment.rank1"])

    (out / "checkpoints" / "epoch-0002.safetensors").unlink()
    _torchrun(*argv, "--resume", str(out / "checkpoints" / "epoch-0001.safetensors"))
    resumed, _ = checkpoint.load(out / "checkpoints" / "epoch-0002.safetensors")
    assert resumed.keys() == first_run.keys()
    for key in first_run:
        assert torch.equal(resumed[key], first_run[key]), key

    records = _records(out)
    assert [r["epoch"] for r in records if "knn_top1" in r] == [1, 2]  # the kNN monitor ran once per epoch, on rank 0
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # 2 steps of 8 images per epoch, logged once
    assert (out / "encoder.safetensors").is_file() and meta["epoch"] == 2


def _launch_rank(rank: int, port: int, out: Path, data: Path) -> subprocess.Popen:
    """One process of a 2-process run, started the way torchrun would (environment), so the test can kill its peer."""
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    argv = ["--data", str(data), "--out-dir", str(out), "--epochs", "1000", "--dist-timeout", "6", *TINY]
    return subprocess.Popen([sys.executable, "-m", "torchclr", "pretrain", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(out: Path, processes: list[subprocess.Popen], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert all(p.poll() is None for p in processes), [p.communicate()[1][-2000:] for p in processes]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_lost_rank_ends_the_other_with_a_one_line_error(tmp_path: Path, few_images_folder: Path, free_ports: list[int]) -> None:
    """Without torchrun watching, two runs at once: in one, rank 1 dies (noticed at once); in the other it stalls
    (noticed after --dist-timeout). Either way rank 0 stops with a one-line error naming itself; it never hangs."""
    fates = {"dies": (signal.SIGKILL, r"Connection"), "stalls": (signal.SIGSTOP, r"Timed out|timeout")}
    runs = {name: [_launch_rank(rank, port, tmp_path / name, few_images_folder) for rank in range(WORLD)]
            for name, port in zip(fates, free_ports)}
    errors = {}
    try:
        for name, (survivor, victim) in runs.items():
            _wait_for_training(tmp_path / name, [survivor, victim])
            victim.send_signal(fates[name][0])
        start = time.monotonic()
        for name, (survivor, _) in runs.items():
            errors[name] = survivor.communicate(timeout=60)[1]
        assert time.monotonic() - start < 45
    finally:
        for process in (p for pair in runs.values() for p in pair):
            process.kill()
            process.communicate()
    for name, stderr in errors.items():
        last = stderr.strip().splitlines()[-1]
        assert runs[name][0].returncode == 2, (name, stderr[-2000:])
        reason = re.match(r"torchclr: error: process 0 of 2 lost contact with the others \((.*)\): ", last)
        assert reason and re.search(fates[name][1], reason[1]), (name, last)


@pytest.mark.slow
def test_torchrun_ends_the_run_when_a_worker_dies(tmp_path: Path, few_images_folder: Path) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(few_images_folder), "--out-dir", str(out), "--epochs", "1000", *TINY]
    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 str(WORLD), "-m", "torchclr", "pretrain", *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_training(out, [torchrun])
        worker_pid = int(Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split()[-1])
        os.kill(worker_pid, signal.SIGKILL)
        _, stderr = torchrun.communicate(timeout=60)
    finally:
        torchrun.kill()
        torchrun.communicate()
    assert torchrun.returncode != 0 and "exitcode  : -9" in stderr, stderr[-2000:]
