"""`--protocol linear`: the paper's linear evaluation (section 2.3 and appendix B.6) - a linear layer trained on the
frozen encoder's h with SGD, on random crops of the training images, tested on the centre views.

The paper's recipe on ImageNet, the preset here for sets of its size: Nesterov momentum 0.9, batch 4096, learning
rate 0.1 x B/256 (1.6), 90 epochs, no weight decay or other regularisation, random resized crop and horizontal
flip as the only augmentation. The decay schedule is cosine, as in torchclr's fine-tuning. Smaller sets keep the
rules and scale the sizes: the batch is the largest power of two that still gives an epoch `MIN_STEPS_PER_EPOCH`
steps, the learning rate follows it by the same rule, and the epochs fall in proportion to the set below
`FULL_EPOCHS_FROM` images (a linear layer on a few thousand images converges long before 90 passes), never below
`MIN_EPOCHS`. Every option can be set by hand.

The encoder stays in eval mode (BN running statistics) and is never updated: each epoch every training image gets
a new crop, whose h is computed in batches without autograd, and only the layer learns. A parameter-free BN
standardises h before the layer, as in fine-tuning (`torchclr.evaluate.finetune`), so that the paper's learning
rate does not depend on the scale of h, which pretraining changes a lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from torchclr.options import check_number, check_seed
from torchclr.evaluate.features import extract_features
from torchclr.evaluate.knn import accuracy
from torchclr.optim import scaled_lr, warmup_cosine_scheduler
from torchclr.transforms import AugmentSpec, BatchAugment

PAPER_EPOCHS, PAPER_BATCH, PAPER_BASE_LR = 90, 4096, 0.1
FULL_EPOCHS_FROM = 50_000  # training images from which the paper's 90 epochs are used (CIFAR-10's train split)
MIN_EPOCHS = 15
MIN_STEPS_PER_EPOCH = 32
MIN_BATCH = 16


def crop_and_flip(image_size: int) -> BatchAugment:
    """Random resized crop (scale 0.08-1, ratio 3/4-4/3) and flip, nothing else: the paper's evaluation augmentation."""
    return BatchAugment(AugmentSpec(image_size=image_size, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0))


@dataclass(frozen=True)
class EpochBatches:
    """The row indexes of every training step of `epochs` shuffled passes over `images` rows, seeded, and their count
    (what the lr schedule needs). Train-mode BN needs two rows a batch, so a lone leftover row sits the epoch out (a
    new one each epoch, as the order is reshuffled)."""

    images: int
    batch_size: int
    epochs: int
    seed: int

    def _bounds(self) -> list[tuple[int, int]]:
        bounds = [(start, min(start + self.batch_size, self.images)) for start in range(0, self.images, self.batch_size)]
        return [(start, stop) for start, stop in bounds if stop - start >= 2]

    def __len__(self) -> int:
        return self.epochs * len(self._bounds())

    def __iter__(self) -> Iterator[torch.Tensor]:
        shuffle, bounds = torch.Generator().manual_seed(self.seed), self._bounds()
        for _ in range(self.epochs):
            order = torch.randperm(self.images, generator=shuffle)
            for start, stop in bounds:
                yield order[start:stop]


def linear_head(feature_dim: int, num_classes: int) -> nn.Sequential:
    """A linear layer on h standardised by a parameter-free BN (see the module docstring)."""
    return nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, num_classes))


@dataclass(frozen=True)
class LinearSettings:
    """The SGD linear evaluation's options; None: scaled to the training set (see `resolve`)."""

    epochs: int | None = None
    batch_size: int | None = None
    base_lr: float = PAPER_BASE_LR  # scaled by batch / 256
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for flag, value in (("--linear-epochs", self.epochs), ("--linear-batch-size", self.batch_size),
                            ("--linear-lr", self.base_lr)):
            check_number(flag, value, low=0, low_open=True)
        check_number("--linear-weight-decay", self.weight_decay, low=0)
        check_seed("--seed", self.seed)

    def resolve(self, images: int) -> tuple[int, int, float]:
        """(epochs, batch size, learning rate) for a training set of `images`."""
        batch = self.batch_size or _scaled_batch(images)
        epochs = self.epochs or max(MIN_EPOCHS, min(PAPER_EPOCHS, round(PAPER_EPOCHS * images / FULL_EPOCHS_FROM)))
        return epochs, min(batch, images), scaled_lr(self.base_lr, batch, "linear")


def _scaled_batch(images: int) -> int:
    """The paper's 4096, or the largest power of two that leaves an epoch `MIN_STEPS_PER_EPOCH` steps."""
    batch = PAPER_BATCH
    while batch > MIN_BATCH and batch * MIN_STEPS_PER_EPOCH > images:
        batch //= 2
    return batch


def linear_eval(
    encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
    test_labels: torch.Tensor, num_classes: int, settings: LinearSettings, device: torch.device,
    extract_batch: int = 512, dtype: torch.dtype | None | str = "auto",
) -> dict[str, float]:
    """Top-1/top-5 (%) on `test_features` (h of the test centre views) of a linear layer trained with SGD on h of
    random crops of the uint8 `train_images`; the encoder runs frozen, `extract_batch` images at a time."""
    epochs, batch_size, lr = settings.resolve(len(train_images))
    batches = EpochBatches(len(train_images), batch_size, epochs, settings.seed)
    torch.manual_seed(settings.seed)
    head = linear_head(test_features.shape[1], num_classes).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)
    scheduler = warmup_cosine_scheduler(optimizer, len(batches), 0)
    augment, generator = crop_and_flip(train_images.shape[-1]), torch.Generator(device=device).manual_seed(settings.seed)
    head.train()
    for index in batches:
        views = augment(train_images[index].to(device), generator)
        features = extract_features(encoder, views, device, extract_batch, dtype).to(device)
        loss = F.cross_entropy(head(features), train_labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    head.eval()
    with torch.no_grad():
        scores = head(test_features.to(device)).cpu()
    return {"top1": accuracy(scores, test_labels, 1), "top5": accuracy(scores, test_labels, 5), "epochs": float(epochs),
            "batch_size": float(batch_size), "lr": lr}
