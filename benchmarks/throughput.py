"""Full SimCLR pretraining steps per second: torchclr's fast path beside lightly 1.6.0, on the same images.

    python benchmarks/throughput.py                                   # CPU: ResNet-18 (CIFAR stem), 32 px, batch 256
    python benchmarks/throughput.py --device cuda --batch-size 512    # one GPU

A step is augmentation + forward + backward + optimiser. The contenders take turns, round after round, in one
process: on a shared machine the absolute speed drifts with the neighbours' load, while figures taken side by side
keep their ratio. Peak memory is measured for each contender alone, in a fresh process (`--probe`).
lightly runs as its SimCLR example shows its users: SimCLRTransform per PIL image in DataLoader workers, two
forward passes, NTXentLoss, SGD, in fp32 (its default) and, to tell precision from data path, under bf16 autocast.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from itertools import chain, count
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from torchclr.config import PretrainConfig
from torchclr.data.loaders import BatchedViews
from torchclr.runtime import default_workers
from torchclr.data.pipeline import batch_augment, stored_side
from torchclr.data.sources import ImageSet, open_images
from torchclr.loss import build_loss
from torchclr.models import SimCLR, build_encoder, build_simclr
from torchclr.optim import build_optimizer, scaled_lr
from torchclr.runtime import autocast_dtype, resolve_device, seed_everything, wrap_for_training
from torchclr.step import StepContext, training_step

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
SAMPLE = "sample"
CONTENDERS = ("torchclr", "torchclr+compile", "lightly", "lightly+bf16")
BASELINE = "lightly"  # the peer as its users run it: every ratio is against this one
PROJECTED_EPOCHS, CIFAR10_TRAIN_IMAGES = 200, 50_000
PROBE_STEPS = 2


class Contender(Protocol):
    name: str
    precision: str

    def batches(self, round_index: int) -> Iterator[Any]:
        """A fresh, endless stream of training batches, epoch after epoch, through the contender's own data path."""
        ...

    def step(self, batch: Any) -> torch.Tensor:
        """One optimisation step on a batch; returns the loss."""
        ...


class Torchclr:
    """torchclr's fast path as `torchclr pretrain` runs it: images decoded once into a uint8 tensor, BatchAugment on
    the training device, then `training_step` (both views in one forward, autocast, channels_last, NT-Xent, LARS);
    with `config.views`, its multi-crop views (one forward per view size, the multi-positive NT-Xent)."""

    def __init__(self, name: str, config: PretrainConfig, images: ImageSet, device: torch.device) -> None:
        self.name, self.precision = name, config.precision
        start = time.perf_counter()
        views = config.multi_crop()
        self.views = BatchedViews(images, config.augment_spec(), batch_size=config.batch_size, device=device, seed=config.seed,
                                  stored_size=stored_side(config), augment=batch_augment(config))
        self.decode_seconds = time.perf_counter() - start
        model = build_simclr(config.arch, config.image_size, config.cifar_stem, config.head, config.head_layers, config.proj_dim)
        model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
        lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
        optimizer = build_optimizer(model, config.optimizer, lr=lr, weight_decay=config.weight_decay, momentum=config.momentum)
        _, forward_model = wrap_for_training(model, device, sync_bn=config.sync_bn, compile=config.compile)
        self.ctx = StepContext(
            model=forward_model, optimizer=optimizer,
            loss_fn=build_loss(config.loss, config.temperature, config.margin, views=views.views if views else 2),
            scaler=torch.amp.GradScaler(device.type, enabled=config.precision == "fp16"), device=device,
            dtype=autocast_dtype(config.precision, device), channels_last=config.channels_last,
        )

    def batches(self, round_index: int) -> Iterator[tuple[torch.Tensor, ...]]:
        return chain.from_iterable(self.views.epoch(epoch) for epoch in count(round_index))

    def step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return training_step(self.ctx, *batch)


class PilImages(Dataset):
    """The images as PIL RGB pictures through a per-image transform: what ImageFolder and LightlyDataset hand over."""

    def __init__(self, images: ImageSet, transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        assert self.images.read_bytes is not None
        with Image.open(io.BytesIO(self.images.read_bytes(self.images.names[index]))) as picture:
            return self.transform(picture.convert("RGB")), self.images.labels[index]


class Lightly:
    """lightly 1.6.0 as in its SimCLR example: SimCLRTransform in DataLoader workers, the backbone with
    SimCLRProjectionHead run once per view, NTXentLoss, SGD; the backbone is torchclr's, so both train the same network."""

    def __init__(self, name: str, config: PretrainConfig, images: ImageSet, device: torch.device,
                 dtype: torch.dtype | None, workers: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform

        self.name, self.device, self.dtype = name, device, dtype
        self.precision = "fp32" if dtype is None else "bf16"
        spec = config.augment_spec()
        transform = SimCLRTransform(input_size=spec.image_size, cj_strength=spec.jitter_strength,
                                    gaussian_blur=spec.effective_blur_p, min_scale=spec.crop_scale[0])
        # Persistent workers: started once, in the first turn's warm-up, so that no timed window pays for forking
        # them (a short epoch, such as the sample's 9 steps at batch 512, would otherwise end inside one).
        self.loader = DataLoader(PilImages(images, transform), batch_size=config.batch_size, shuffle=True, drop_last=True,
                                 num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        encoder = build_encoder(config.arch, config.image_size, config.cifar_stem)
        head = SimCLRProjectionHead(encoder.feature_dim, encoder.feature_dim, config.proj_dim)
        self.model = SimCLR(encoder, head).to(device)
        self.criterion = NTXentLoss(temperature=config.temperature)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

    def batches(self, round_index: int) -> Iterator[Any]:
        return chain.from_iterable(iter(self.loader) for _ in count())  # each epoch re-shuffles, on the same workers

    def step(self, batch: Any) -> torch.Tensor:
        (first, second), _ = batch
        first, second = first.to(self.device, non_blocking=True), second.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.criterion(self.model(first)[1], self.model(second)[1])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()


def build_contender(name: str, config: PretrainConfig, images: ImageSet, device: torch.device, workers: int) -> Contender:
    torch.manual_seed(config.seed)
    if name.startswith("torchclr"):
        return Torchclr(name, replace(config, compile=name.endswith("+compile")), images, device)
    return Lightly(name, config, images, device, torch.bfloat16 if name.endswith("+bf16") else None, workers)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_for(contender: Contender, round_index: int, warmup: int, count: int, train: bool, device: torch.device) -> float:
    """Wall time of `count` batches (each trained on when `train`) after `warmup` untimed ones, from a fresh stream."""
    batches = contender.batches(round_index)

    def one() -> None:
        batch = next(batches)
        if train:
            contender.step(batch)

    for _ in range(warmup):
        one()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        one()
    synchronize(device)
    return time.perf_counter() - start


def bf16_matmul_flops(device: torch.device) -> float:
    """FLOP/s of a square bf16 matrix product, the best of a few: the ceiling the model's convolutions are held to."""
    side, repeats = (8192, 10) if device.type == "cuda" else (2048, 2)
    left, right = (torch.randn(side, side, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(4):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            left @ right
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 * repeats / best


def flop_per_pair(config: PretrainConfig) -> float:
    """Training FLOP for one pair of views: forward of two images, times 3 for forward + backward (the usual count)."""
    model = build_simclr(config.arch, config.image_size, config.cifar_stem, config.head, config.head_layers, config.proj_dim)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(2, 3, config.image_size, config.image_size))
    return 3.0 * counter.get_total_flops()


def _pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(child) for child in children.read().split()]
    return found


def main_peak_rss() -> int:
    """This process's peak resident set (VmHWM): unlike ru_maxrss it does not start from the parent's size at fork."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of a process and its descendants: pages shared after fork() are counted once in all."""
    try:
        return _pss_bytes(pid) + sum(tree_pss_bytes(child) for child in _children(pid))
    except (FileNotFoundError, ProcessLookupError, StopIteration):  # a worker that ended while we looked
        return 0


class PeakMemory:
    """Samples the PSS of this process and its DataLoader workers in a thread; `peak` is the highest sum seen."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.peak, self.interval_s = 0, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, tree_pss_bytes(os.getpid()))


@dataclass
class Timings:
    """Per round: seconds for `steps` full training steps, the bf16 matmul rate measured just before and after them
    (what this process got of the shared machine then), and seconds for `steps` batches of the data path alone."""

    train: list[float] = field(default_factory=list)
    matmul: list[float] = field(default_factory=list)
    augment: list[float] = field(default_factory=list)


def per_second(items: int, seconds: list[float]) -> float:
    return statistics.median(items / s for s in seconds)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_name() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = ", avx512_bf16" if "avx512_bf16" in flags else ""
    return f"{names[0] if names else platform.processor()} ({os.cpu_count()} cores{bf16})"


def open_subset(data: str, limit: int | None) -> ImageSet:
    """The training split, or `limit` images spread over it (names are sorted by class, so every class stays in)."""
    images = open_images(data, "train")
    if limit is None or limit >= len(images):
        return images
    stride = len(images) // limit
    keep = list(range(0, stride * limit, stride))
    return replace(images, names=[images.names[i] for i in keep], labels=[images.labels[i] for i in keep], fingerprint="")


def probe(name: str, config: PretrainConfig, args: argparse.Namespace, device: torch.device) -> None:
    """Child-process mode: build one contender, train PROBE_STEPS steps after the warm-up, print its peak memory as JSON."""
    with PeakMemory() as memory:
        contender = build_contender(name, config, open_subset(config.data, args.limit), device, args.workers)
        seconds_for(contender, 0, args.warmup, PROBE_STEPS, True, device)
    result = {"peak_pss": memory.peak, "main_rss": main_peak_rss(),
              "gpu_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0}
    print(json.dumps(result))


def probe_in_fresh_process(name: str) -> dict[str, int]:
    command = [sys.executable, __file__, *sys.argv[1:], "--probe", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory probe of {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="images (anything `torchclr pretrain --data` takes); default: the CIFAR-10 JPEGs "
                        f"at {DEFAULT_DATA} when present, else the 5,000-image sample shipped with torchclr (said so)")
    parser.add_argument("--limit", type=int, help="use this many training images, spread over the classes (default: all)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when present)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per step")
    parser.add_argument("--workers", type=int, default=default_workers(), help="lightly's DataLoader workers (default: %(default)s, as torchclr's reference path)")
    parser.add_argument("--contenders", default="torchclr,lightly,lightly+bf16", help=f"comma-separated, from {', '.join(CONTENDERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="turns each contender takes (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per turn (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each turn (default: %(default)s)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes")
    parser.add_argument("--probe", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.data is None:
        args.data = str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else SAMPLE
        if args.data == SAMPLE and not args.probe:
            print(f"no {DEFAULT_DATA}: using the shipped CIFAR-10 sample (5,000 images) instead", flush=True)
    args.contenders = args.contenders.split(",")
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown or BASELINE not in args.contenders:
        parser.error(f"--contenders must be from {', '.join(CONTENDERS)} and include {BASELINE}")
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    config = PretrainConfig(data=args.data, arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
                            device=str(device), progress=False)
    config.validate()
    seed_everything(config.seed, config.deterministic)  # cuDNN autotuning and TF32 as `torchclr pretrain` sets them, for all
    if args.probe:
        probe(args.probe, config, args, device)
        return

    import lightly

    images = open_subset(config.data, args.limit)
    gflop = flop_per_pair(config) / 1e9
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    stem = "CIFAR stem" if build_encoder(config.arch, config.image_size, config.cifar_stem).cifar_stem else "ImageNet stem"
    print(f"machine: {accelerator}; torch {torch.__version__}, lightly {lightly.__version__}, {torch.get_num_threads()} torch threads")
    print(f"data: {images.origin} ({len(images)} images); {config.arch} ({stem}) at {config.image_size} px, "
          f"batch {config.batch_size} pairs, {gflop:.1f} GFLOP per pair; lightly workers: {args.workers}")
    print(f"{args.rounds} rounds x {args.steps} timed steps after {args.warmup} warm-up; load average at start: {load_average()}", flush=True)

    contenders = [build_contender(name, config, images, device, args.workers) for name in args.contenders]
    own = next((c for c in contenders if isinstance(c, Torchclr)), None)
    if own is not None:
        held = own.views.images
        print(f"torchclr decodes the images once: {own.decode_seconds:.1f} s, held as {tuple(held.shape)} uint8 "
              f"({held.numel() / 2**20:,.0f} MiB, on {held.device}; valid sizes {'per image' if own.views.sizes is not None else 'all full'})",
              flush=True)
    timings = {c.name: Timings() for c in contenders}
    for round_index in range(args.rounds):
        order = contenders if round_index % 2 == 0 else contenders[::-1]  # no contender always follows the same one
        for contender in order:
            own, before = timings[contender.name], bf16_matmul_flops(device)
            own.train.append(seconds_for(contender, round_index, args.warmup, args.steps, True, device))
            own.matmul.append((before + bf16_matmul_flops(device)) / 2)
        for contender in order:
            timings[contender.name].augment.append(seconds_for(contender, round_index, 1, args.steps, False, device))
        shown = ", ".join(f"{name} {per_second(config.batch_size * args.steps, [t.train[-1]]):.1f} "
                          f"(matmul {t.matmul[-1] / 1e9:,.0f} GFLOP/s)" for name, t in timings.items())
        print(f"round {round_index + 1}: pairs/s {shown}; load {load_average()}", flush=True)

    memory = {name: probe_in_fresh_process(name) for name in args.contenders} if args.memory else {}
    pairs = config.batch_size * args.steps
    baseline = timings[BASELINE].train
    header = (f"{'contender':<18}{'precision':>10}{'pairs/s':>9}{'x lightly':>10}{'GFLOP/s':>9}{'of bf16 mm':>11}"
              f"{'aug img/s':>11}{'peak mem':>12}{'main RSS':>11}{'GPU peak':>11}{'200 ep':>9}")
    print("\n" + header)
    for contender in contenders:
        own = timings[contender.name]
        rate = per_second(pairs, own.train)
        ratio = statistics.median(b / t for b, t in zip(baseline, own.train))
        of_matmul = statistics.median(pairs * gflop * 1e9 / t / m for t, m in zip(own.train, own.matmul))
        used = memory.get(contender.name)
        hours = PROJECTED_EPOCHS * CIFAR10_TRAIN_IMAGES / rate / 3600
        print(f"{contender.name:<18}{contender.precision:>10}{rate:>9.1f}{ratio:>9.2f}x{rate * gflop:>9.0f}"
              f"{of_matmul:>10.0%} {per_second(pairs, own.augment):>10,.0f}"
              f"{mib(used['peak_pss']) if used else '-':>12}{mib(used['main_rss']) if used else '-':>11}"
              f"{mib(used['gpu_peak']) if used and used['gpu_peak'] else '-':>11}{hours:>8.1f}h")
    matmul = [m for t in timings.values() for m in t.matmul]
    print(f"\nbf16 matmul rate: median {statistics.median(matmul) / 1e9:,.0f}, "
          f"best {max(matmul) / 1e9:,.0f} GFLOP/s; load average at end: {load_average()}")
    print("pairs/s and aug img/s: median over rounds; x lightly: median of per-round ratios; of bf16 mm: model FLOP/s "
          "over the bf16 matmul rate measured just before and after the same steps, median over rounds; "
          "aug img/s: the data path alone "
          "(torchclr: indexing + BatchAugment; lightly: DataLoader workers decoding + SimCLRTransform), images of 2 views; "
          "peak mem: PSS of the process + its workers in a fresh process; 200 ep: 200 epochs of 50,000 images")


if __name__ == "__main__":
    main()
