"""Semi-supervised evaluation (paper, section 6 and appendix B.5): fine-tune the whole encoder with a new linear
classifier on a class-balanced 1% or 10% of the labels, then report test accuracy.

The paper's recipe: Nesterov momentum 0.9, lr 0.05 x B/256 without warm-up (cosine decay here), no weight
decay or other regularisation, random crop and flip as the only augmentation, 60 epochs on 1% of the labels
and 30 on 10%. Fine-tuning random weights the same way is supervised training from scratch on the subset.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from torchclr import memory
from torchclr.errors import UserError
from torchclr.options import check_number, check_seed
from torchclr.evaluate.features import extract_features
from torchclr.evaluate.knn import accuracy
from torchclr.evaluate.linear import EpochBatches, crop_and_flip, linear_head
from torchclr.models import Encoder
from torchclr.models.channels import input_channels
from torchclr.optim import parameter_groups, scaled_lr, warmup_cosine_scheduler
from torchclr.runtime import resolve_dtype


def paper_epochs(label_fraction: float) -> int:
    """60 epochs for 1% of the labels or fewer, 30 above (the paper's 1% and 10% settings)."""
    return 60 if label_fraction <= 0.01 else 30


@dataclass(frozen=True)
class FinetuneSettings:
    label_fraction: float = 0.1
    epochs: int | None = None  # None: paper_epochs(label_fraction)
    batch_size: int = 256
    base_lr: float = 0.05  # scaled by batch / 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("--label-fraction", self.label_fraction, low=0, low_open=True, high=1)
        for flag, value in (("--finetune-epochs", self.epochs), ("fine-tuning batch size", self.batch_size),
                            ("fine-tuning learning rate", self.base_lr)):
            check_number(flag, value, low=0, low_open=True)
        check_seed("--seed", self.seed)


def labelled_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of `fraction` of each class's images (at least one per class), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in labels.unique():
        members = (labels == cls).nonzero().squeeze(1)
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


class Classifier(nn.Module):
    """The encoder f with a linear layer on h, standardised by a parameter-free BN.

    The standardisation (as the linear probe's) keeps the head's effective learning rate independent of the
    scale of h, which pretraining changes a lot (here ~4x the norm of a random network's h): without it the
    first steps on a pretrained h are large enough to wreck the features they should refine.
    """

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = linear_head(encoder.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


MIN_PIECE = 4  # train-mode BN wants a few images per forward; pieces of a batch are at least half this cap


def images_per_pass(model: nn.Module, image_size: int, batch_size: int, device: torch.device,
                    dtype: torch.dtype | None) -> int:
    """How many images one forward/backward of `model` may take within the memory plan (at most `batch_size`).

    Measured as the pretraining plan is (`memory.fit_linear`: the real pass at two sizes on a throw-away copy),
    so that fine-tuning, which runs after hours of pretraining, is not what runs out of memory. A batch bigger
    than this is run in pieces with gradients accumulated: the optimizer still steps on the whole batch.
    """
    if not memory.PeakMeter.available(device):
        return batch_size
    generator = torch.Generator(device=device).manual_seed(0)

    def run_at(images: int) -> Callable[[], object]:
        probe = copy.deepcopy(model)
        views = torch.rand(images, input_channels(model), image_size, image_size, device=device, generator=generator).contiguous(
            memory_format=torch.channels_last)
        labels = torch.zeros(images, dtype=torch.long, device=device)

        def run() -> None:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(probe(views).float(), labels)
            loss.backward()
        return run

    cost = memory.fit_linear(run_at, memory.probe_sizes(batch_size), device)
    budget = int(memory.free_memory(device) * memory.HEADROOM)
    most = cost.most_images(budget)
    if most < min(MIN_PIECE, batch_size):
        raise UserError(f"fine-tuning needs ~{cost.at(MIN_PIECE) / memory.GiB:.1f} GiB for {MIN_PIECE} images at "
                        f"{image_size} px, {budget / memory.GiB:.1f} GiB to plan with: free memory or use a smaller model")
    return min(batch_size, most)


def finetune(
    encoder: Encoder, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
    test_labels: torch.Tensor, num_classes: int, settings: FinetuneSettings, device: torch.device,
    dtype: torch.dtype | None | str = "auto",
) -> dict[str, float]:
    """Top-1/top-5 (%) on the test images of a copy of `encoder` fine-tuned on a labelled subset of uint8 train images
    (`dtype` 'auto': bf16 where it is native on `device`)."""
    dtype = resolve_dtype(dtype, device)
    subset = labelled_subset(train_labels, settings.label_fraction, settings.seed)
    if len(subset) < MIN_PIECE:  # train-mode BN (the memory probe's too) cannot take a batch of 1
        raise UserError(f"fine-tuning needs at least {MIN_PIECE} labelled training images; --label-fraction "
                        f"{settings.label_fraction:g} of {len(train_labels)} gives {len(subset)}: use a larger fraction or more images")
    images, labels = train_images[subset], train_labels[subset]
    epochs = settings.epochs or paper_epochs(settings.label_fraction)
    batch_size = min(settings.batch_size, len(subset))
    batches = EpochBatches(len(subset), batch_size, epochs, settings.seed)

    torch.manual_seed(settings.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device, memory_format=torch.channels_last)
    per_pass = images_per_pass(model, test_images.shape[-1], batch_size, device, dtype)
    if per_pass < batch_size:
        print(f"fine-tuning: batches of {batch_size} in pieces of at most {per_pass} images (memory plan), gradients "
              "accumulated", file=sys.stderr, flush=True)
    lr = scaled_lr(settings.base_lr, batch_size, "linear")
    optimizer = torch.optim.SGD(parameter_groups(model, 0.0), lr=lr, momentum=0.9, nesterov=True)
    scheduler = warmup_cosine_scheduler(optimizer, len(batches), 0)
    augment, generator = crop_and_flip(test_images.shape[-1]), torch.Generator(device=device).manual_seed(settings.seed)
    model.train()
    for index in batches:
        optimizer.zero_grad(set_to_none=True)
        for piece in index.tensor_split(math.ceil(len(index) / per_pass)):
            views = augment(images[piece].to(device), generator).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(views).float(), labels[piece].to(device), reduction="sum") / len(index)
            loss.backward()
        optimizer.step()
        scheduler.step()
    scores = extract_features(model, test_images, device, autocast_dtype=dtype)
    return {"top1": accuracy(scores, test_labels, 1), "top5": accuracy(scores, test_labels, 5),
            "labelled_images": float(len(subset)), "epochs": float(epochs)}
