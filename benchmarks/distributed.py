"""Scaling figures for torchclr's training step, printed as a small table.

1. Throughput at the same global batch: 1 process with all cores, 1 process with one core, and N processes under
   torchrun with one core each (gloo on the CPU, NCCL on GPUs), each with batch/N images, DDP and global BN -
   torchclr's own step (`train.training_step`) on synthetic views.
2. Peak memory of one step at a big batch: the plain step against gradient caching (`--grad-cache-chunk`).
   On a GPU: torch.cuda.max_memory_allocated. On the CPU: the peak resident set (ru_maxrss) of a fresh process,
   minus what it held before the step (import, model, batch).

Everything runs in fresh subprocesses, so one measurement never inherits another's memory or threads:

    python benchmarks/distributed.py                      # all of it, then the table
    python benchmarks/distributed.py --image-size 32 --memory-batch 512
The workers (`throughput`, `memory`) are what the driver starts; they print one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from torchclr import distributed
from torchclr.loss import build_loss
from torchclr.models import build_simclr
from torchclr.optim import build_optimizer, scaled_lr
from torchclr.runtime import autocast_dtype, resolve_device, wrap_for_training
from torchclr.step import StepContext, training_step


def step_context(images_per_process: int, image_size: int, grad_cache_chunk: int | None) -> StepContext:
    """torchclr's training step as `pretrain` builds it (ResNet-18, NT-Xent, LARS, bf16 autocast), for this process."""
    device = resolve_device("auto", distributed.local_rank())
    torch.manual_seed(0)
    model = build_simclr("resnet18", image_size, None, "mlp", 2, 128).to(device, memory_format=torch.channels_last)
    model, forward_model = wrap_for_training(model, device, sync_bn=True, compile=False)
    global_batch = images_per_process * distributed.world_size()
    optimizer = build_optimizer(model, "lars", lr=scaled_lr(0.3, global_batch, "linear"), weight_decay=1e-6, momentum=0.9)
    return StepContext(model=forward_model, loss_fn=build_loss("nt_xent", 0.5, 1.0), optimizer=optimizer,
                       scaler=torch.amp.GradScaler(device.type, enabled=False), device=device,
                       dtype=autocast_dtype("bf16", device), channels_last=True, grad_cache_chunk=grad_cache_chunk)


def synthetic_views(images: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(distributed.rank())
    first, second = torch.rand(2, images, 3, image_size, image_size, generator=generator).to(device)
    return first, second


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Images per second over `--steps` steps after `--warmup` steps, at global batch `--batch`."""
    world = distributed.world_size()
    ctx = step_context(args.batch // world, args.image_size, None)
    first, second = synthetic_views(args.batch // world, args.image_size, ctx.device)
    for _ in range(args.warmup):
        training_step(ctx, first, second)
    synchronize(ctx.device)
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        training_step(ctx, first, second)
    synchronize(ctx.device)
    seconds = time.perf_counter() - start
    return {"processes": world, "threads": torch.get_num_threads(), "batch": args.batch,
            "step_s": seconds / args.steps, "images_per_s": args.batch * args.steps / seconds}


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of the first step at batch `--memory-batch`, plain or chunked (a peak is never lowered: no warm-up)."""
    ctx = step_context(args.memory_batch, args.image_size, args.chunk)
    first, second = synthetic_views(args.memory_batch, args.image_size, ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
        before = torch.cuda.memory_allocated(ctx.device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    training_step(ctx, first, second)
    synchronize(ctx.device)
    seconds = time.perf_counter() - start
    if ctx.device.type == "cuda":
        peak, measure = torch.cuda.max_memory_allocated(ctx.device), "cuda max_memory_allocated"
    else:
        peak, measure = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {"batch": args.memory_batch, "chunk": args.chunk, "measure": measure, "before_mib": before / 2**20,
            "peak_mib": peak / 2**20, "step_mib": (peak - before) / 2**20, "step_s": seconds}


def _worker(kind: str, args: argparse.Namespace, launcher: list[str], threads: int | None = None) -> dict[str, Any]:
    """Run one measurement in fresh processes (`threads` each, default torch's) and return rank 0's JSON line."""
    argv = [__file__, kind, "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--image-size", str(args.image_size), "--memory-batch", str(args.memory_batch)]
    if args.chunk:
        argv += ["--chunk", str(args.chunk)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    result = subprocess.run([*launcher, *argv], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", choices=("all", "throughput", "memory"), default="all")
    parser.add_argument("--processes", type=int, default=2, help="processes of the distributed throughput run")
    parser.add_argument("--batch", type=int, default=64, help="global batch of the throughput runs")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the throughput runs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--image-size", type=int, default=16, help="side of the (synthetic) views")
    parser.add_argument("--memory-batch", type=int, default=1024, help="batch of the memory runs (one process)")
    parser.add_argument("--chunk", type=int, default=None, help="images per chunk for gradient caching")
    args = parser.parse_args()
    if args.kind != "all":
        device = resolve_device("auto", distributed.local_rank())
        with distributed.process_group(device, timeout_s=600):
            result = throughput(args) if args.kind == "throughput" else memory(args)
            if distributed.is_main_process():
                print(json.dumps(result), flush=True)
        return

    python = [sys.executable]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.processes)]
    # One process with all cores, one with a core (what each of the N processes gets), then N processes.
    rows = [_worker("throughput", args, python), _worker("throughput", args, python, threads=1),
            _worker("throughput", args, torchrun, threads=1)]
    print(f"throughput, ResNet-18 at {args.image_size} px, global batch {args.batch}, {args.steps} timed steps")
    print(f"{'processes':>9} {'threads each':>12} {'s/step':>8} {'images/s':>9} {'vs first':>8}")
    for row in rows:
        print(f"{row['processes']:>9} {row['threads']:>12} {row['step_s']:>8.2f} {row['images_per_s']:>9.1f} "
              f"{row['images_per_s'] / rows[0]['images_per_s']:>7.2f}x")

    chunk = args.chunk or args.memory_batch // 8
    args.chunk = None
    plain = _worker("memory", args, python)
    args.chunk = chunk
    cached = _worker("memory", args, python)
    print(f"\none step at batch {args.memory_batch} ({plain['measure']}), ResNet-18 at {args.image_size} px")
    print(f"{'step':<24} {'peak MiB':>9} {'step MiB':>9} {'s/step':>8}")
    for name, row in (("plain", plain), (f"grad cache, chunk {chunk}", cached)):
        print(f"{name:<24} {row['peak_mib']:>9.0f} {row['step_mib']:>9.0f} {row['step_s']:>8.2f}")
    print(f"gradient caching needs {cached['step_mib'] / plain['step_mib']:.2f}x the step memory of the plain step")


if __name__ == "__main__":
    main()
