"""The streaming path: images stay encoded, DataLoader workers decode each batch to a bounded size.

For sets whose decoded form would not fit in memory (see `torchclr.data.plan`). Workers decode JPEGs in PIL's
draft mode, fit each image within the stored side (aspect kept, never upscaled) and pad the batch to one square
with every image's valid (h, w) beside it; the batched augmentation then draws each crop inside its own image on
the training device, with the same generator as the in-memory path. Workers do no random draws, so they persist
across epochs and resume stays exact. An image that cannot be decoded is replaced by another image of its batch
and counted; the count is reported at the end of the epoch.
"""

from __future__ import annotations

import itertools
import sys
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from torchclr.data.cache import fit_within, pad_to
from torchclr.data.device_decode import EncodedJpeg, decode_on_device, worth_decoding_on_device
from torchclr.data.loaders import Views, epoch_sampler, view_generator
from torchclr.runtime import default_workers
from torchclr.data.reader import decode_image
from torchclr.data.sources import ImageSet
from torchclr.errors import UserError
from torchclr.transforms import AugmentSpec, BatchAugment, StagedAugment
from torchclr.transforms.batched import MultiCropAugment

DecodedBatch = tuple[torch.Tensor | None, torch.Tensor | None, list[str]]


class BoundedImages(Dataset):
    """Image i decoded to uint8 [3, h, w] with max(h, w) <= side, or the one-line reason it could not be; with
    `keep_jpegs`, a JPEG worth decoding on the training device comes back still encoded (see device_decode)."""

    def __init__(self, images: ImageSet, side: int, keep_jpegs: bool = False) -> None:
        self.images, self.side, self.keep_jpegs = images, side, keep_jpegs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | str | EncodedJpeg:
        try:
            if not self.keep_jpegs:
                return fit_within(self.images.image(index, draft_side=self.side), self.side)
            assert self.images.read_bytes is not None  # streamed sets are read from files
            name = self.images.names[index]
            where, data = f"{self.images.origin}/{name}", self.images.read_bytes(name)
            if worth_decoding_on_device(data, self.side, self.images.policy.max_image_pixels):
                return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), where)
            image = decode_image(data, where, self.images.policy.max_image_pixels, draft_side=self.side,
                                 channels=self.images.policy.channels, value_range=self.images.policy.value_range)
            return fit_within(image, self.side)
        except UserError as err:
            return str(err)


def pad_batch(items: list[torch.Tensor | str]) -> DecodedBatch:
    """(uint8 [B, 3, M, M] padded to the batch's longest side M, int [B, 2] valid sizes, failures).

    A failed image is replaced by a decoded one of the same batch, so the batch keeps its size (the loss's
    negatives and BN statistics assume it); with none decoded, the images are None.
    """
    failures = [item for item in items if isinstance(item, str)]
    decoded = [item for item in items if not isinstance(item, str)]
    if not decoded:
        return None, None, failures
    filled = [item if not isinstance(item, str) else decoded[i % len(decoded)] for i, item in enumerate(items)]
    side = max(max(image.shape[-2:]) for image in filled)
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in filled], dtype=torch.int64)
    return torch.stack([pad_to(image, side) for image in filled]), sizes, failures


class _FromPosition(Sampler[int]):
    """The epoch's order from DistributedSampler, minus its first `skip` indices (a mid-epoch resume)."""

    def __init__(self, order: DistributedSampler) -> None:
        self.order, self.skip = order, 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.order), self.skip, None)

    def __len__(self) -> int:
        return len(self.order) - self.skip


class StreamedViews:
    """Pairs of views (or multi-crop `views`) from images decoded batch by batch in persistent DataLoader workers (or, with
    `jpegs_on_device`, read there and decoded on the training device); one shard per rank."""

    def __init__(self, images: ImageSet, spec: AugmentSpec, *, batch_size: int, device: torch.device, seed: int,
                 stored_side: int, rank: int = 0, world: int = 1, workers: int | None = None,
                 jpegs_on_device: bool = False,
                 augment: BatchAugment | StagedAugment | MultiCropAugment | None = None) -> None:
        workers = default_workers() if workers is None else workers
        self.sampler = epoch_sampler(len(images), seed, rank, world)
        self.steps_per_epoch, self.batch_size = len(self.sampler) // batch_size, batch_size
        self.position = _FromPosition(self.sampler)
        self.loader = DataLoader(
            BoundedImages(images, stored_side, jpegs_on_device), batch_size=batch_size, sampler=self.position,
            num_workers=workers, collate_fn=list if jpegs_on_device else pad_batch, drop_last=True,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            # Its own generator for the workers' base seed, so that starting them leaves the global RNG (saved in
            # checkpoints) alone: a resumed run starts them once more than an uninterrupted one.
            generator=torch.Generator().manual_seed(seed),
        )
        self.device, self.side, self.jpegs_on_device = device, stored_side, jpegs_on_device
        self.augment = augment or BatchAugment(spec)
        self.generator = view_generator(seed, rank, device)
        self.skipped = 0  # images replaced in the last epoch because they could not be decoded

    def set_step(self, step: int, total_steps: int | None) -> None:
        self.augment.set_step(step, total_steps)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Views]:
        self.sampler.set_epoch(epoch)
        self.position.skip = start_step * self.batch_size
        self.skipped, first_failure = 0, ""
        try:
            for batch in self.loader:
                if self.jpegs_on_device:
                    batch = pad_batch(decode_on_device(batch, self.side, self.device))
                images, sizes, failures = batch
                if failures:
                    self.skipped += len(failures)
                    first_failure = first_failure or failures[0]
                if images is None or sizes is None:
                    raise UserError(f"no image of a batch of {len(failures)} could be decoded (first: {failures[0]})")
                images = images.to(self.device, non_blocking=True)
                yield self.augment.draw(images, self.generator, sizes.to(self.device, non_blocking=True))
        finally:  # also when the loop stops drawing (the run's last step): a skip is never left unsaid
            if self.skipped:
                print(f"torchclr: warning: epoch {epoch + 1} skipped {self.skipped} images that could not be decoded "
                      f"(replaced by others of their batch; first: {first_failure})", file=sys.stderr, flush=True)
