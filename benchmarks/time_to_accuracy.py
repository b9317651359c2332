"""kNN top-1 on the CIFAR-10 test set after N minutes of pretraining: torchclr against lightly 1.6.0, plus random weights.

    python benchmarks/time_to_accuracy.py                                   # 5, 15 and 60 minutes each
    python benchmarks/time_to_accuracy.py --budgets 5m,15m --timed-prefix "flock /tmp/measure.lock"

For each budget, one after the other: `torchclr pretrain --config cpu-budget --time-budget B` and lightly's SimCLR
example settings (ResNet-18 with the CIFAR stem, 32 px, batch 256, fp32: `throughput.py`'s `Lightly`, as its
example runs: SimCLRTransform in DataLoader workers, NTXentLoss, SGD) trained for the same B from its first step.
Each timed run is a subprocess of its own (`--timed-prefix` goes in front of it, e.g. a lock that keeps other
measurements off the machine), with the load average before and after. The encoders are evaluated afterwards,
outside the timed runs: weighted kNN (k = 200, T = 0.1) of the 10,000 test images against the 50,000 training
images, each at its own view size, and the same for each architecture with random weights. `--reuse` takes the
finished runs already in `--work-dir` (each keeps its wall time and load in `timed.json`) instead of training again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from torchclr.budget import format_duration, parse_duration
from torchclr.config import PretrainConfig
from torchclr.runtime import default_workers
from torchclr.data.sources import open_images
from torchclr.evaluate.monitor import LabelledEval, evaluate_encoders
from torchclr.models import build_encoder
from torchclr.pretrained import load_encoder
from torchclr.pretrained import save_encoder

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
LIGHTLY = PretrainConfig(arch="resnet18", cifar_stem=True, image_size=32, batch_size=256, precision="fp32", temperature=0.5,
                         jitter_strength=1.0, blur_p=0.5, crop_scale=(0.08, 1.0))  # SimCLRTransform(input_size=32) defaults


def timed(command: list[str], prefix: list[str], out: Path) -> dict[str, float | str]:
    """Run one timed training subprocess; its wall time and the load average before and after, kept in `out`."""
    before = f"{os.getloadavg()[0]:.2f}"
    start = time.perf_counter()
    subprocess.run(prefix + command, check=True)
    record = {"wall_s": time.perf_counter() - start, "load_before": before, "load_after": f"{os.getloadavg()[0]:.2f}"}
    (out / "timed.json").write_text(json.dumps(record))
    return record


def train_lightly(data: str, budget: float, out: Path, workers: int) -> None:
    """lightly's SimCLR example, stepped until `budget` seconds have passed since its first step; writes the encoder."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import Lightly  # the same lightly contender as the throughput benchmark

    torch.manual_seed(LIGHTLY.seed)
    contender = Lightly("lightly", LIGHTLY, open_images(data, "train"), torch.device("cpu"), None, workers)
    steps, start = 0, time.perf_counter()
    for batch in contender.batches(0):
        contender.step(batch)
        steps += 1
        if time.perf_counter() - start >= budget:
            break
    seconds = time.perf_counter() - start
    save_encoder(out / "encoder.safetensors", contender.model, LIGHTLY)
    (out / "trained.json").write_text(json.dumps({"steps": steps, "seconds": seconds, "pairs": steps * LIGHTLY.batch_size}))
    print(f"lightly: {steps} steps of {LIGHTLY.batch_size} in {seconds:.0f} s", flush=True)


def knn_top1(data: str, encoders: dict[str, torch.nn.Module], image_size: int) -> dict[str, float]:
    labelled = LabelledEval.open(data, image_size)
    results = evaluate_encoders(labelled, encoders, torch.device("cpu"), "knn")
    return {name: result["top1"] for name, result in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="5m,15m,60m", help="comma-separated durations (default: %(default)s)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 with train/ and test/ (default: %(default)s)")
    parser.add_argument("--config", default="cpu-budget", help="torchclr preset or YAML file (default: %(default)s)")
    parser.add_argument("--work-dir", default="runs/time-to-accuracy", help="run folders (default: %(default)s)")
    parser.add_argument("--timed-prefix", default="", help="command put in front of each timed run, e.g. 'flock LOCKFILE'")
    parser.add_argument("--workers", type=int, default=default_workers(), help="lightly's DataLoader workers (default: %(default)s)")
    parser.add_argument("--contenders", default="torchclr,lightly", help="comma-separated: torchclr, lightly (default: %(default)s)")
    parser.add_argument("--reuse", action="store_true", help="evaluate the finished runs already in --work-dir instead of training them again")
    parser.add_argument("--lightly-run", nargs=2, metavar=("SECONDS", "OUT"), help=argparse.SUPPRESS)  # one timed lightly run
    args = parser.parse_args()
    if args.lightly_run:
        train_lightly(args.data, float(args.lightly_run[0]), Path(args.lightly_run[1]), args.workers)
        return

    budgets = [(text, parse_duration(text, "--budgets")) for text in args.budgets.split(",")]
    contenders = args.contenders.split(",")
    work, prefix = Path(args.work_dir), shlex.split(args.timed_prefix)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; data {args.data}", flush=True)
    rows = []
    for text, seconds in budgets:
        for contender in contenders:
            out = work / f"{contender}-{text}"
            out.mkdir(parents=True, exist_ok=True)
            if contender == "torchclr":
                command = [sys.executable, "-m", "torchclr", "pretrain", "--config", args.config, "--data", args.data,
                           "--out-dir", str(out), "--time-budget", str(seconds), "--knn-every", "0", "--no-final-report",
                           "--no-progress", "--keep-checkpoints", "1"]
            else:
                command = [sys.executable, __file__, "--data", args.data, "--workers", str(args.workers),
                           "--lightly-run", str(seconds), str(out)]
            finished = args.reuse and (out / "encoder.safetensors").exists() and (out / "timed.json").exists()
            record = json.loads((out / "timed.json").read_text()) if finished else timed(command, prefix, out)
            rows.append({"contender": contender, "budget": text, "seconds": seconds, **record, "encoder": str(out / "encoder.safetensors")})
            print(f"{contender} {text}: {record['wall_s']:.0f} s wall (setup included), load {record['load_before']} -> "
                  f"{record['load_after']}{' (reused)' if finished else ''}", flush=True)

    os.nice(19)  # evaluation is not timed: it yields to whatever else is measured on the machine
    architectures = {}
    for row in rows:
        encoder, _, info = load_encoder(row["encoder"])
        model, size = info["model"], info["image_size"]
        row["knn_top1"] = knn_top1(args.data, {"encoder": encoder}, size)["encoder"]
        print(f"{row['contender']} {row['budget']}: kNN top-1 {row['knn_top1']:.2f}", flush=True)
        architectures[(model["arch"], model["cifar_stem"], size)] = None
        trained = Path(row["encoder"]).parent
        metrics = trained / "metrics.jsonl"
        if metrics.exists():
            steps = [json.loads(line) for line in metrics.read_text().splitlines()]
            row["steps"] = max(r["step"] for r in steps)
        else:
            row["steps"] = json.loads((trained / "trained.json").read_text())["steps"]
    for arch, cifar_stem, size in architectures:
        torch.manual_seed(0)
        top1 = knn_top1(args.data, {"random": build_encoder(arch, size, cifar_stem)}, size)["random"]
        architectures[(arch, cifar_stem, size)] = top1
        print(f"random {arch} ({'CIFAR' if cifar_stem else 'ImageNet'} stem, {size} px): kNN top-1 {top1:.2f}", flush=True)

    print("\n| what | pretraining time | steps | kNN top-1 | load before -> after |\n| --- | --- | --- | --- | --- |")
    for (arch, cifar_stem, size), top1 in architectures.items():
        print(f"| random weights ({arch}, {'CIFAR' if cifar_stem else 'ImageNet'} stem, {size} px) | 0 | 0 | {top1:.1f} | |")
    names = {"torchclr": f"torchclr pretrain --config {args.config}",
             "lightly": "lightly 1.6.0 SimCLR example (ResNet-18 CIFAR stem, 32 px, batch 256, fp32)"}
    for row in rows:
        print(f"| {names[row['contender']]} | {format_duration(row['seconds'])} | {row['steps']} | {row['knn_top1']:.1f} | "
              f"{row['load_before']} -> {row['load_after']} |")
    randoms = [{"arch": a, "cifar_stem": c, "image_size": s, "knn_top1": t} for (a, c, s), t in architectures.items()]
    (work / "time_to_accuracy.json").write_text(json.dumps({"random": randoms, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
