"""How close the memory plan's estimate comes to the step's real peak, printed as a table.

For each architecture, view size and batch (images per process): one fresh process makes the plan exactly as
`torchclr pretrain` does (`memory.plan_pretraining` with --grad-cache-chunk auto, on this machine's free memory)
and reports its estimate for the step it chose (chunked or not); another fresh process runs that very step once
(`train.training_step`, same model, loss, LARS, bf16 autocast, channels-last) and reports its real peak:
on a GPU torch.cuda.max_memory_allocated, on the CPU the peak resident set (ru_maxrss) minus the resident set
before the batch's views were made, i.e. what the step adds to the process - what the plan estimates.

    python benchmarks/memory_plan.py                                   # the whole grid (slow on a small CPU)
    python benchmarks/memory_plan.py --archs resnet18 --sizes 32 --batches 64 256
The workers (`plan`, `step`) are what the driver starts; they print one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from torchclr import memory
from torchclr.evaluate.features import extract_features
from torchclr.loss import build_loss
from torchclr.models import SimCLR, build_simclr
from torchclr.optim import build_optimizer, scaled_lr
from torchclr.runtime import autocast_dtype, resolve_device
from torchclr.step import StepContext, training_step


def step_context(arch: str, image_size: int, batch: int, chunk: int | None) -> tuple[StepContext, SimCLR]:
    """The step `torchclr pretrain` builds for one process (no DDP): mlp head, NT-Xent, LARS, bf16, channels-last."""
    device = resolve_device("auto")
    torch.manual_seed(0)
    model = build_simclr(arch, image_size, None, "mlp", 2, 128).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, "lars", lr=scaled_lr(1.0, batch, "linear"), weight_decay=1e-6, momentum=0.9)
    ctx = StepContext(model=model, loss_fn=build_loss("nt_xent", 0.5, 1.0), optimizer=optimizer,
                      scaler=torch.amp.GradScaler(device.type, enabled=False), device=device,
                      dtype=autocast_dtype("bf16", device), channels_last=True, grad_cache_chunk=chunk)
    return ctx, model


def plan(args: argparse.Namespace) -> dict[str, Any]:
    ctx, model = step_context(args.arch, args.image_size, args.batch, None)
    start = time.perf_counter()
    result = memory.plan_pretraining(ctx, training_step, model, args.batch, args.image_size, "auto", infer=extract_features)
    return {"chunk": result.chunk, "estimate": result.needed(result.chunk), "free": result.free,
            "plan_s": time.perf_counter() - start}


def _rss_bytes() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024


def step(args: argparse.Namespace) -> dict[str, Any]:
    ctx, _ = step_context(args.arch, args.image_size, args.batch, args.chunk)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
        before = torch.cuda.memory_allocated(ctx.device)
    else:
        before = _rss_bytes()
    first, second = torch.rand(2, args.batch, 3, args.image_size, args.image_size, device=ctx.device)
    start = time.perf_counter()
    training_step(ctx, first, second)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        peak = torch.cuda.max_memory_allocated(ctx.device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"measured": peak - before, "step_s": time.perf_counter() - start}


def _worker(kind: str, arch: str, image_size: int, batch: int, chunk: int | None = None) -> dict[str, Any]:
    argv = [sys.executable, __file__, kind, "--archs", arch, "--sizes", str(image_size), "--batches", str(batch)]
    if chunk:
        argv += ["--chunk", str(chunk)]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{kind} {arch} {image_size}px batch {batch} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", choices=("table", "plan", "step"), default="table")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 96])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--chunk", type=int, default=None, help="(step worker) images per gradient-caching chunk")
    args = parser.parse_args()
    if args.kind != "table":
        args.arch, args.image_size, args.batch = args.archs[0], args.sizes[0], args.batches[0]
        print(json.dumps(plan(args) if args.kind == "plan" else step(args)), flush=True)
        return

    mib = 2**20
    print(f"{'arch':<9} {'px':>3} {'batch':>5} {'chunk':>5} {'free MiB':>9} {'estimate MiB':>12} {'measured MiB':>12} "
          f"{'error':>7} {'plan s':>6} {'step s':>7}", flush=True)
    for arch in args.archs:
        for size in args.sizes:
            for batch in args.batches:
                planned = _worker("plan", arch, size, batch)
                real = _worker("step", arch, size, batch, planned["chunk"])
                error = (planned["estimate"] - real["measured"]) / real["measured"]
                print(f"{arch:<9} {size:>3} {batch:>5} {planned['chunk'] or '-':>5} {planned['free'] / mib:>9.0f} "
                      f"{planned['estimate'] / mib:>12.0f} {real['measured'] / mib:>12.0f} {error:>+7.1%} "
                      f"{planned['plan_s']:>6.1f} {real['step_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
