"""Write an encoder.safetensors with random weights: the baseline `torchclr embed` / `neighbors` figures compare against.

    python benchmarks/random_encoder.py --config quickstart --out runs/random/encoder.safetensors

Same architecture and image size as the config (a preset or YAML file), weights as freshly initialised
(seeded), written the way a finished run writes its encoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torchclr.config import PretrainConfig, from_dict, load_yaml
from torchclr.models import build_simclr
from torchclr.pretrained import save_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart", help="preset or YAML file giving arch and image size")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config: PretrainConfig = from_dict(load_yaml(args.config), f"config {args.config}")
    torch.manual_seed(args.seed)
    model = build_simclr(config.arch, config.image_size, config.cifar_stem, config.head, config.head_layers, config.proj_dim)
    save_encoder(Path(args.out), model, config)
    print(f"wrote {args.out}: random {config.arch} at {config.image_size} px")


if __name__ == "__main__":
    main()
