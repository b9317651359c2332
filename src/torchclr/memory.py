"""The memory plan: before the first step, measure what a training step costs, compare it with the memory free
on the device, and pick gradient caching's chunk and the evaluation's batch sizes so that nothing runs out.

Measured, not computed from a formula: `measure` runs the real step (the very `training_step` that training runs,
with its autocast, memory format, loss and optimizer) on throw-away copies of the model and optimizer at two
small batch sizes, and reads the peak memory each run adds:

- on a GPU, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`;
- on the CPU, the peak resident set of this process: Linux resets it when "5" is written to
  /proc/self/clear_refs, and reports it as VmHWM in /proc/self/status. What the kernel counts is what the
  out-of-memory killer acts on, allocator overheads included, and the probe needs no second process.

Two sizes separate the fixed part (gradients, optimizer state, workspaces) from the part that grows with the
images (activations); the step at the real batch is their linear extrapolation, plus what chunking does not
shrink, measured at the real size: the views of the whole batch and the loss over all 2N embeddings (the 2N x 2N
similarity matrix, its softmax and their gradients). Multi-crop runs (`views`) probe with their view groups and
count V views per image in both parts.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import gc
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from torchclr import distributed
from torchclr.errors import UserError
from torchclr.models.channels import input_channels
from torchclr.transforms.multicrop import MultiCrop

GiB = 2**30
HEADROOM = 0.75  # share of the free memory a plan may use: the rest absorbs estimate error, fragmentation, other jobs
MIN_CHUNK = 32  # smallest sensible chunk: BatchNorm statistics over fewer than 64 views get noisy
PROBE_IMAGES = (16, 64)  # the two batch sizes of the probe (capped by the batch itself): big enough to be linear
EVAL_BATCH_MAX = 512  # feature extraction gains nothing from bigger batches
KNN_CHUNK_MAX = 1024


class Inference(Protocol):
    """The evaluation's forward pass on uint8 images [B, 3, S, S] (`torchclr.evaluate.extract_features`), handed
    to the plan so that it measures what evaluation really runs while memory planning stays below evaluation."""

    def __call__(self, encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> object: ...


def _meminfo_bytes(field: str, path: str = "/proc/meminfo") -> int | None:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(path).read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def cgroup_memory_left(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this container may still allocate under a cgroup memory limit (v2 or v1), or None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit, usage = (root / limit_file).read_text().strip(), (root / usage_file).read_text().strip()
        except OSError:
            continue
        if limit == "max" or int(limit) >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - int(usage))
    return None


def free_memory(device: torch.device) -> int:
    """Bytes this process can still use: free GPU memory, or on the CPU the RAM available (under a cgroup limit
    if one is set), shared with the other torchclr processes of this machine."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = _meminfo_bytes("MemAvailable") or 0
    in_cgroup = cgroup_memory_left()
    if in_cgroup is not None:
        available = min(available, in_cgroup)
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _trim_heap() -> None:
    """Hand freed heap pages back to the kernel, so that a measurement starts from what is really held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak bytes added by a block of code on `device` (see the module's docstring for how)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes = 0

    @staticmethod
    def available(device: torch.device) -> bool:
        return device.type == "cuda" or os.access("/proc/self/clear_refs", os.W_OK)

    def start(self) -> None:
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.start_bytes = _meminfo_bytes("VmRSS", "/proc/self/status") or 0

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.start_bytes)
        return max(0, (_meminfo_bytes("VmHWM", "/proc/self/status") or 0) - self.start_bytes)


def measure_peak(prepare: Callable[[], Callable[[], object]], device: torch.device) -> int:
    """Peak bytes of running what `prepare()` returns; what `prepare` itself allocates is not counted."""
    run = prepare()
    meter = PeakMeter(device)
    meter.start()
    run()
    peak = meter.peak()
    del run
    _trim_heap()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak


@dataclass(frozen=True)
class LinearCost:
    """bytes(images) = fixed + per_image x images, fitted through two measured runs."""

    fixed: int
    per_image: float

    def at(self, images: int) -> int:
        return int(self.fixed + self.per_image * images)

    def most_images(self, budget: int) -> int:
        """The most images whose cost stays within `budget` (0 if even the fixed part does not fit)."""
        if self.per_image <= 0:
            return 0 if self.fixed > budget else 2**31
        return max(0, int((budget - self.fixed) // self.per_image))


def fit_linear(run_at: Callable[[int], Callable[[], object]], sizes: tuple[int, int], device: torch.device) -> LinearCost:
    """Measure `run_at(images)` at both sizes and fit fixed + per_image x images (never negative).

    The first run also pays what a process allocates once (kernel caches, thread buffers): it goes into the fixed
    part, and the slope comes from a second run at the small size, which no longer pays it.
    """
    small, large = sizes
    cold = measure_peak(lambda: run_at(small), device)
    if large == small:
        return LinearCost(fixed=0, per_image=cold / small)
    high = measure_peak(lambda: run_at(large), device)
    warm = measure_peak(lambda: run_at(small), device)
    per_image = max(0.0, (high - warm) / (large - small))
    return LinearCost(fixed=max(0, int(cold - per_image * small)), per_image=per_image)


def probe_sizes(batch: int) -> tuple[int, int]:
    return min(PROBE_IMAGES[0], max(1, batch // 2)), min(PROBE_IMAGES[1], batch)


@dataclass(frozen=True)
class TrainingPlan:
    """What one step needs and what the run does about it; all sizes per process and in bytes."""

    batch: int
    chunk: int | None  # images per gradient-caching chunk; None: the whole batch at once
    free: int
    network: LinearCost  # one forward + backward + optimizer step, by images run through the network at once
    whole_batch: int  # the views of the whole batch and the loss over all its embeddings: chunking keeps these
    eval_batch: int  # images per batch of feature extraction (kNN monitor, linear probe)
    knn_chunk: int  # test images per block of the kNN similarity matrix
    reason: str

    @property
    def budget(self) -> int:
        return int(self.free * HEADROOM)

    def needed(self, chunk: int | None = None) -> int:
        """Estimated peak bytes of a step run in chunks of `chunk` images (None: unchunked)."""
        return self.network.at(min(chunk or self.batch, self.batch)) + self.whole_batch

    @classmethod
    def unmeasured(cls, batch: int, requested: int | str) -> "TrainingPlan":
        """Where nothing can be measured: what was asked for, or no caching, and the evaluation's defaults."""
        chunk = requested if isinstance(requested, int) and requested < batch else None
        return cls(batch, chunk, 0, LinearCost(0, 0.0), 0, EVAL_BATCH_MAX, KNN_CHUNK_MAX,
                   "no way to measure memory on this system: " + (f"chunks of {chunk}" if chunk else "no gradient caching"))

    def describe(self) -> str:
        if not self.free:
            return f"memory plan: {self.reason}."
        chunked = f", {self.needed(self.chunk) / GiB:.2f} GiB in chunks of {self.chunk}" if self.chunk else ""
        return (f"memory plan: a step of {self.batch} images needs ~{self.needed() / GiB:.2f} GiB{chunked} "
                f"({self.network.fixed / GiB:.2f} GiB fixed, {self.network.per_image / 2**20:.1f} MiB per image, "
                f"{self.whole_batch / GiB:.2f} GiB for the whole batch's views and loss); "
                f"{self.free / GiB:.1f} GiB free, {HEADROOM:.0%} of it planned. {self.reason}. "
                f"Evaluation batches: {self.eval_batch} images, kNN blocks of {self.knn_chunk}.")


def largest_even_chunk(batch: int, most: int) -> int:
    """The largest chunk of at most `most` images that splits `batch` into equal chunks (the last may be short)."""
    pieces = math.ceil(batch / max(1, most))
    return math.ceil(batch / pieces)


def choose_chunk(network: LinearCost, whole_batch: int, batch: int, budget: int, requested: int | str) -> tuple[int | None, str]:
    """(chunk or None, why). `requested` is 'auto', 'off' or a number of images, which always wins."""
    needed = network.at(batch) + whole_batch
    if requested != "auto":
        chunk = requested if isinstance(requested, int) and requested < batch else None
        what = f"gradient caching in chunks of {chunk}" if chunk else "no gradient caching"
        warning = "" if network.at(chunk or batch) + whole_batch <= budget else " (more than the plan allows: it may run out of memory)"
        return chunk, f"--grad-cache-chunk {requested}: {what}{warning}"
    if needed <= budget:
        return None, f"batch {batch} needs ~{needed / GiB:.1f} GiB, {budget / GiB:.1f} GiB to plan with: no gradient caching"
    most = network.most_images(budget - whole_batch)
    if most < min(MIN_CHUNK, batch):
        raise UserError(_would_fit(network, whole_batch, batch, budget))
    chunk = largest_even_chunk(batch, most)
    return chunk, f"batch {batch} needs ~{needed / GiB:.1f} GiB, {budget / GiB:.1f} GiB to plan with: gradient caching in chunks of {chunk}"


def _would_fit(network: LinearCost, whole_batch: int, batch: int, budget: int) -> str:
    """One line for a batch that no chunk saves: the whole-batch part grows about linearly (views) plus quadratically
    (the loss); the largest batch that fits with the smallest chunk is found by halving."""
    smallest = min(MIN_CHUNK, batch)
    fits = batch
    while fits > 1 and network.at(min(smallest, fits)) + whole_batch * (fits / batch) > budget:
        fits //= 2
    hint = f"at most --batch-size {fits} per process fits" if fits > 1 else "not even a batch of 2 fits"
    return (f"batch {batch} per process needs ~{(network.at(smallest) + whole_batch) / GiB:.1f} GiB even with "
            f"--grad-cache-chunk {smallest}, and {budget / GiB:.1f} GiB are free to plan with: {hint} "
            f"(or use more processes, a smaller --image-size or --arch)")


def _fresh_step_context(ctx: Any, bare_model: nn.Module, chunk: int | None) -> Any:
    """A copy of the run's step context with its own model, optimizer and scaler, so that probing leaves the run
    untouched; the copies are made together so that the optimizer holds the copied parameters."""
    model, optimizer, scaler = copy.deepcopy((bare_model, ctx.optimizer, ctx.scaler))
    return dataclasses.replace(ctx, model=model, optimizer=optimizer, scaler=scaler, grad_cache_chunk=chunk)


def _generator(device: torch.device) -> torch.Generator:
    """Probes draw from their own stream: the run's random state stays as it was."""
    return torch.Generator(device=device).manual_seed(0)


def _views(images: int, image_size: int, device: torch.device, views: MultiCrop | None = None, *,
           channels: int = 3) -> tuple[torch.Tensor, ...]:
    """Random views as a loader yields them: a pair [images, ...] each, or one [count x images, ...] per view group."""
    if views is None:
        first, second = torch.rand(2, images, channels, image_size, image_size, device=device, generator=_generator(device))
        return first, second
    return tuple(torch.rand(group.count * images, channels, group.size, group.size, device=device, generator=_generator(device))
                 for group in views.groups)


def _view_bytes(image_size: int, views: MultiCrop | None, channels: int) -> int:
    """Bytes of one image's float32 views."""
    return channels * 4 * (2 * image_size**2 if views is None else views.pixels)


def measure_network(ctx: Any, step: Callable[..., object], bare_model: nn.Module,
                    batch: int, image_size: int, views: MultiCrop | None = None) -> LinearCost:
    """Fixed and per-image bytes of `step(ctx, *views)` (the real `training_step`), unchunked, on copies."""

    channels = input_channels(bare_model)

    def run_at(images: int) -> Callable[[], object]:
        probe_ctx = _fresh_step_context(ctx, bare_model, None)
        probe_views = _views(images, image_size, ctx.device, views, channels=channels)

        def run() -> None:
            step(probe_ctx, *probe_views)
        return run

    cost = fit_linear(run_at, probe_sizes(batch), ctx.device)
    # Below the allocator's noise (tiny views) the slope can come out as 0: an image costs at least its views.
    return dataclasses.replace(cost, per_image=max(cost.per_image, _view_bytes(image_size, views, channels)))


def measure_whole_batch(ctx: Any, batch: int, image_size: int, embedding_dim: int, views: MultiCrop | None = None) -> int:
    """Bytes of what every step holds for the whole batch, chunked or not: its float views, and the loss over its
    V x N embeddings (V = 2, or the multi-crop views) with their gradients (measured at the real size: it grows with
    N squared)."""
    view_bytes = batch * _view_bytes(image_size, views, input_channels(ctx.model))
    rows = batch * (2 if views is None else views.views)

    def loss_run() -> Callable[[], object]:
        z = torch.randn(rows, embedding_dim, device=ctx.device, generator=_generator(ctx.device)).requires_grad_()

        def run() -> None:
            with ctx.autocast():
                loss = ctx.loss_fn(z)
            loss.backward()
        return run

    return view_bytes + measure_peak(loss_run, ctx.device)


def embedding_dim(model: nn.Module) -> int:
    """Width of z: the head's last linear layer, or h itself without a head."""
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else model.encoder.feature_dim


def measure_inference(infer: Inference, encoder: nn.Module, image_size: int, device: torch.device) -> LinearCost:
    """Fixed and per-image bytes of `infer` itself (the evaluation's forward pass, in eval mode)."""

    def run_at(images: int) -> Callable[[], object]:
        shape = (images, input_channels(encoder), image_size, image_size)
        batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=_generator(torch.device("cpu")))
        return lambda: infer(encoder, batch, device, batch_size=images)

    return fit_linear(run_at, PROBE_IMAGES, device)


def power_of_two_at_most(value: int, cap: int) -> int:
    return max(1, min(cap, 2 ** int(math.log2(max(1, value)))))


def plan_pretraining(ctx: Any, step: Callable[..., object], bare_model: nn.Module,
                     batch: int, image_size: int, requested: int | str, eval_images: int = 0, *,
                     views: MultiCrop | None = None, infer: Inference) -> TrainingPlan:
    """The plan for a run whose step is `step(ctx, *views)` at `batch` images per process (`bare_model`: the
    SimCLR network without DDP or compile, which the probe copies) and whose evaluation runs `infer`; `views`: the
    multi-crop groups, if any (gradient caching runs two views: a multi-crop batch that would need it is refused in
    one line).

    Under torchrun every process measures its own share and all take the smallest chunk and evaluation batch.
    `eval_images` is the size of the kNN bank (training split of the labelled data), for the kNN block size.
    """
    device = ctx.device
    if not PeakMeter.available(device):
        return TrainingPlan.unmeasured(batch, requested)
    network = measure_network(ctx, step, bare_model, batch, image_size, views)
    whole_batch = measure_whole_batch(ctx, batch, image_size, embedding_dim(bare_model), views)
    free = free_memory(device)
    budget = int(free * HEADROOM)
    error = None
    try:
        chunk, reason = choose_chunk(network, whole_batch, batch, budget, requested)
        if chunk is not None and views is not None:
            raise UserError(f"batch {batch} per process with --views ({views.views} views per image) needs "
                            f"~{(network.at(batch) + whole_batch) / GiB:.1f} GiB, {budget / GiB:.1f} GiB to plan with, "
                            "and gradient caching runs two views only: lower --batch-size or use fewer or smaller --views")
    except UserError as err:
        chunk, reason, error = None, "", str(err)
    inference = measure_inference(infer, bare_model.encoder, image_size, device)
    eval_batch = power_of_two_at_most(inference.most_images(budget), EVAL_BATCH_MAX)
    # kNN: a block of test features against the whole bank, as float32 similarities plus top-k's own copy.
    knn_chunk = power_of_two_at_most(budget // max(1, 8 * eval_images), KNN_CHUNK_MAX)
    mine = (error, chunk, eval_batch, knn_chunk)
    everyone = distributed.all_gather_objects(mine)
    errors = [e for e, *_ in everyone if e]
    if errors:
        raise UserError(errors[0] if error is None else error)
    chunks = [c for _, c, *_ in everyone if c]
    if chunks and min(chunks) != chunk:
        reason += f"; chunks of {min(chunks)}, the smallest any of the {len(everyone)} processes needs"
    chunk = min(chunks) if chunks else None
    eval_batch, knn_chunk = min(e for *_, e, _ in everyone), min(k for *_, k in everyone)
    return TrainingPlan(batch, chunk, free, network, whole_batch, eval_batch, knn_chunk, reason)
