"""Training steps per second of multi-crop views against two views, in images/s and views/s.

    python benchmarks/multicrop_throughput.py --data sample --views 2x48 2x48,4x24

Each --views spec is a contender: `torchclr pretrain`'s own step (`benchmarks/throughput.py`'s Torchclr: BatchedViews,
training_step, LARS, bf16, channels-last) on the same images. The contenders take turns, round after round, in one
process, so that on a shared machine their ratio holds while the absolute speed drifts; the ratio column is the
median of per-round ratios against the first contender.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace


from throughput import Torchclr, load_average, open_subset, seconds_for
from torchclr.config import PretrainConfig
from torchclr.train import resolve_device, seed_everything


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample", help="images, as `torchclr pretrain --data` (default: the shipped sample)")
    parser.add_argument("--config", default="cpu-budget", help="preset whose model and optimisation to use (default: %(default)s)")
    parser.add_argument("--views", nargs="+", default=["2x48", "2x48,4x24"], help="--views of each contender")
    parser.add_argument("--limit", type=int, default=1024, help="training images to hold (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each turn")
    return parser.parse_args()


def main() -> None:
    from torchclr.config import load_yaml

    args = parse_args()
    device = resolve_device(args.device)
    base = PretrainConfig(**{**load_yaml(args.config), "data": args.data, "batch_size": args.batch_size,
                             "device": str(device), "progress": False, "image_size": None})
    seed_everything(base.seed, base.deterministic)
    images = open_subset(base.data, args.limit)
    contenders = []
    for views in args.views:
        config = replace(base, views=views)
        config = replace(config, image_size=config.view_groups().large_size)
        config.validate()
        contenders.append((views, config.view_groups().views, Torchclr(views, config, images, device)))
    print(f"data: {images.origin} ({len(images)} images), {base.arch}, batch {base.batch_size}, {base.precision}; "
          f"{args.rounds} rounds x {args.steps} timed steps after {args.warmup} warm-up; load {load_average()}", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    for round_index in range(args.rounds):
        order = contenders if round_index % 2 == 0 else contenders[::-1]
        for name, _, contender in order:
            seconds[name].append(seconds_for(contender, round_index, args.warmup, args.steps, True, device))
        shown = ", ".join(f"{name} {base.batch_size * args.steps / s[-1]:.1f}" for name, s in seconds.items())
        print(f"round {round_index + 1}: images/s {shown}; load {load_average()}", flush=True)
    first = seconds[contenders[0][0]]
    print(f"\n{'--views':<16}{'views/img':>10}{'images/s':>10}{'views/s':>10}{'images/s vs first':>19}")
    for name, per_image, _ in contenders:
        rate = statistics.median(base.batch_size * args.steps / s for s in seconds[name])
        ratio = statistics.median(f / s for f, s in zip(first, seconds[name]))
        print(f"{name:<16}{per_image:>10}{rate:>10.1f}{rate * per_image:>10.1f}{ratio:>18.2f}x")
    print(f"medians over rounds; ratio: median of per-round ratios; load average at end: {load_average()}")


if __name__ == "__main__":
    main()
