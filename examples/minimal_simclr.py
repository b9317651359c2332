"""SimCLR (Chen et al. 2020) in about 60 lines from torchclr's public blocks: two random views of every image, an
encoder f and a projection head g, NT-Xent over the 2N views of a batch, LARS with warm-up and cosine decay.

    python examples/minimal_simclr.py                 # a few steps on the CIFAR-10 sample shipped with torchclr
    python examples/minimal_simclr.py DIR --steps 2000  # any folder of images (sub-folders included)

`torchclr pretrain` adds what a real run needs (views batched on the GPU, checkpoints, resume, evaluation).
"""

import argparse
import io
import zipfile
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from torchclr import (LARS, AugmentSpec, NTXentLoss, SimCLR, TwoViews, build_encoder, parameter_groups,
                      projection_head, view_transform, warmup_cosine)


def image_files(folder: str | None) -> list[bytes]:
    """The encoded images of `folder`, or of the training split of the shipped sample."""
    if folder:
        return [p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    with resources.files("torchclr.data").joinpath("sample/cifar10-sample.zip").open("rb") as handle:
        archive = zipfile.ZipFile(handle)
        return [archive.read(name) for name in archive.namelist() if name.startswith("train/") and name.endswith(".jpg")]


class Pairs(Dataset):
    def __init__(self, files: list[bytes], image_size: int) -> None:
        self.files, self.views = files, TwoViews(view_transform(AugmentSpec(image_size=image_size)))  # appendix A

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views(Image.open(io.BytesIO(self.files[index])).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", help="a folder of images (default: the shipped CIFAR-10 sample)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.0, help="peak lr per 256 images (appendix B.9: 0.5-1.5)")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    loader = DataLoader(Pairs(image_files(args.folder), args.image_size), batch_size=args.batch_size, shuffle=True,
                        drop_last=True)
    encoder = build_encoder("resnet18", args.image_size)  # the CIFAR stem at 32 px (appendix B.9)
    model = SimCLR(encoder, projection_head("mlp", encoder.feature_dim, 128))  # section 4.2
    optimizer = LARS(parameter_groups(model, weight_decay=1e-6), lr=0.0, momentum=0.9)  # no decay on BN and biases
    loss_fn, peak_lr, warmup = NTXentLoss(args.temperature), args.lr * args.batch_size / 256, args.steps // 10
    step = 0
    while step < args.steps:
        for first, second in loader:
            for group in optimizer.param_groups:  # the lr is a function of the step (section 2.3 / B.1)
                group["lr"] = peak_lr * warmup_cosine(step, args.steps, warmup)
            _, z = model(torch.cat([first, second]))  # both views in one batch: BN sees all 2N
            loss = loss_fn(z)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            print(f"step {step} loss {loss.item():.4f}", flush=True)
            step += 1
            if step == args.steps:
                break


if __name__ == "__main__":
    main()
