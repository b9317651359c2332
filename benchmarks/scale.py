"""`torchclr pretrain` at scale on synthetic JPEG sets: peak memory, data-path speed and start-up time.

    python benchmarks/scale.py                         # 10k, 100k and 1M small images, 10k photos of 500x375
    python benchmarks/scale.py --sizes 10k,photos      # a part of it

Each set is written once as tar shards in the webdataset layout (10,000 images a shard, with `.cls` labels) in a
temporary folder. To make a million images quick to write, a few hundred distinct JPEGs are encoded once and their
bytes repeated under different names and labels. Each set then runs `torchclr pretrain` in a fresh process on the
streaming path for a few steps (the epoch is cut short by this harness), followed by the kNN monitor and the final
linear probe on a fixed labelled set of the same kind of images (2,000 train / 500 test for the small images,
the same for every size, so that the figures compare the data path and not the size of the probe; 500 / 100 for
the photos, where ResNet-50 at 224 px is slow on a CPU). Reported:

- peak memory: the training process's own peak RSS (getrusage), and the peak proportional set size (PSS) of it and
  its DataLoader workers together (sampled from /proc every 0.1 s; pages a worker shares with its parent count once);
- data images/s: the streaming data path alone (workers decode, pad, batch; augmentation on the device), timed
  before training in the same process; step images/s: full training steps of the same run (metrics.jsonl);
- start-up: from the process start to its first training step (index the shards, sample sizes, build the model).

Targets (issue 8): peak RSS grows by less than 10% from 100k to 1M images; on 500x375 photos the data path keeps up
with ResNet-50 at 224 px (data images/s >= step images/s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

SETS = {  # name: (images, width, height, arch, image size, batch size, labelled set: train, test images)
    "10k": (10_000, 32, 32, "resnet18", 32, 64, 2_000, 500),
    "100k": (100_000, 32, 32, "resnet18", 32, 64, 2_000, 500),
    "1m": (1_000_000, 32, 32, "resnet18", 32, 64, 2_000, 500),
    "photos": (10_000, 500, 375, "resnet50", 224, 16, 500, 100),
}
DISTINCT = 256  # JPEGs actually encoded per set; the rest repeat their bytes
SHARD = 10_000
CLASSES = 10


def _jpegs(width: int, height: int, count: int, seed: int) -> list[bytes]:
    """`count` distinct smooth-noise JPEGs (compress like photos, unlike white noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 255, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def write_shards(folder: Path, count: int, width: int, height: int, seed: int) -> float:
    """`count` labelled images as tar shards in `folder`; returns the seconds it took."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    encoded = _jpegs(width, height, DISTINCT, seed)
    for first in range(0, count, SHARD):
        with tarfile.open(folder / f"shard-{first // SHARD:05d}.tar", "w") as archive:
            for index in range(first, min(first + SHARD, count)):
                for name, payload in ((f"{index:08d}.jpg", encoded[index % DISTINCT]),
                                      (f"{index:08d}.cls", str(index % CLASSES).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
    return time.perf_counter() - start


# Runs in the child process: `torchclr pretrain` with the epoch cut to --steps and the data path timed first.
_DRIVER = r"""
import itertools, json, resource, sys, time
started = time.perf_counter()
steps, measure, argv, report = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:-1], sys.argv[-1]
import torchclr.train as train
from torchclr.cli import main
marks = {}
original = train.build_view_batches

def cut_short(*args, **kwargs):
    batches = original(*args, **kwargs)
    start = time.perf_counter()
    count = 0
    for first, _ in itertools.islice(batches.epoch(10_000), measure):
        count += len(first)
    marks["data_images_per_s"] = count / (time.perf_counter() - start)
    batches.steps_per_epoch = min(batches.steps_per_epoch, steps)
    full_epoch = batches.epoch

    def epoch(number, start_step=0):
        for index, pair in enumerate(itertools.islice(full_epoch(number, start_step), batches.steps_per_epoch - start_step)):
            if index == 0:
                marks.setdefault("startup_s", time.perf_counter() - started - marks["data_s"])
            yield pair
    marks["data_s"] = time.perf_counter() - start
    batches.epoch = epoch
    return batches

train.build_view_batches = cut_short
code = main(["pretrain", *argv])
marks["exit"] = code
marks["total_s"] = time.perf_counter() - started
marks["peak_rss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
json.dump(marks, open(report, "w"))
sys.exit(code)
"""


def _tree_pss_mb(root: int) -> float:
    """Proportional set size of `root` and all its descendants, from /proc: pages shared between the training
    process and its forked workers count once in all (RSS would count them once per process)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid and child not in members]
        members.update(children)
        frontier += children
    total_kb = 0
    for pid in members:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                total_kb += next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total_kb / 1024


def run_pretrain(data: Path, eval_data: Path, out: Path, arch: str, image_size: int, batch: int, steps: int,
                 measure: int, workers: int) -> dict:
    report = out / "scale.json"
    argv = ["--data", str(data), "--eval-data", str(eval_data), "--out-dir", str(out), "--arch", arch, "--image-size",
            str(image_size), "--batch-size", str(batch), "--epochs", "1", "--warmup-epochs", "0", "--data-mode", "stream",
            "--workers", str(workers), "--no-progress", "--no-cifar-stem", "--knn-k", "20", "--lr", "0.3"]
    process = subprocess.Popen([sys.executable, "-c", _DRIVER, str(steps), str(measure), *argv, str(report)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss_mb(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0 or not report.exists():
        raise SystemExit(f"pretrain on {data} failed:\n{output[-3000:]}")
    marks = json.loads(report.read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    marks["step_images_per_s"] = [r["images_per_s"] for r in records if "images_per_s" in r][-1]
    marks["knn_top1"] = next(r["knn_top1"] for r in records if "knn_top1" in r)
    marks["peak_pss_tree_mb"] = peak
    marks["said"] = [line for line in output.splitlines() if line.startswith(("data:", "image size"))]
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1m,photos", help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--steps", type=int, default=5, help="training steps per run")
    parser.add_argument("--measure", type=int, default=10, help="batches timed for the data path alone")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: torchclr's)")
    parser.add_argument("--workdir", help="where to write the sets (default: a temporary folder, deleted after)")
    args = parser.parse_args()
    names = args.sizes.split(",")
    unknown = [name for name in names if name not in SETS]
    if unknown:
        parser.error(f"unknown --sizes {', '.join(unknown)} (choose from {', '.join(SETS)})")
    workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    header = (f"{'set':<8}{'images':>10}{'size':>9} {'model':<9}{'px':>4}{'batch':>6}{'start-up s':>11}{'data img/s':>11}"
              f"{'step img/s':>11}{'RSS MB':>8}{'PSS+wkrs':>9}{'kNN %':>7}{'load':>6}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        print(f"writing sets in {root}: {DISTINCT} distinct JPEGs per set, their bytes repeated under new names "
              f"and labels; {SHARD:,} images a shard", flush=True)
        rows = []
        for name in names:
            count, width, height, arch, image_size, batch, eval_train, eval_test = SETS[name]
            labelled = root / f"eval-{width}x{height}-{eval_train}"
            if not labelled.exists():
                write_shards(labelled / "train", eval_train, width, height, seed=1)
                write_shards(labelled / "test", eval_test, width, height, seed=2)
            data = root / name
            written = write_shards(data / "train", count, width, height, seed=3)
            print(f"{name}: {count:,} images of {width}x{height} written in {written:.1f} s", flush=True)
            marks = run_pretrain(data, labelled, root / f"run-{name}", arch, image_size, batch, args.steps,
                                 args.measure, workers)
            with open("/proc/loadavg") as handle:
                load = float(handle.read().split()[0])
            for line in marks["said"]:
                print(f"  {line}")
            print(f"  done in {marks['total_s']:.0f} s", flush=True)
            print(header)
            print(f"{name:<8}{count:>10,}{f'{width}x{height}':>9} {arch:<9}{image_size:>4}{batch:>6}{marks['startup_s']:>11.1f}"
                  f"{marks['data_images_per_s']:>11.1f}{marks['step_images_per_s']:>11.1f}{marks['peak_rss_self_mb']:>8.0f}"
                  f"{marks['peak_pss_tree_mb']:>9.0f}{marks['knn_top1']:>7.1f}{load:>6.1f}", flush=True)
            rows.append((name, marks))
    by_name = dict(rows)
    if "100k" in by_name and "1m" in by_name:
        for key, what in (("peak_rss_self_mb", "RSS of the training process"), ("peak_pss_tree_mb", "PSS with its workers")):
            growth = by_name["1m"][key] / by_name["100k"][key] - 1
            print(f"peak RSS 100k -> 1M ({what}): {growth:+.1%} (target < +10%)")
    if "photos" in by_name:
        marks = by_name["photos"]
        ratio = marks["data_images_per_s"] / marks["step_images_per_s"]
        print(f"500x375 photos: data path {ratio:.1f}x the ResNet-50 step rate at 224 px (target >= 1)")


if __name__ == "__main__":
    main()
