"""Pairs of views per step, two ways: batched on the training device (fast) or per image in workers (reference);
the batched way also makes multi-crop views (more than two per image, see `torchclr.transforms.multicrop`).

Both draw the images of an epoch with a DistributedSampler (one shard per process, reshuffled by
`set_epoch`), so they see the same images in the same order for the same seed, and resume exactly.
"""

from __future__ import annotations

import itertools
import re
from typing import Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from torchclr import distributed
from torchclr.data.cache import default_stored_size, materialize_padded
from torchclr.data.sources import ImageSet
from torchclr.errors import UserError
from torchclr.runtime import default_workers
from torchclr.transforms import AugmentSpec, BatchAugment, StagedAugment, TwoViews, view_transform
from torchclr.transforms.batched import MultiCropAugment
from torchclr.transforms.multicrop import MultiCrop

GPU_RESIDENT_SHARE = 0.25  # keep a decoded data set on the GPU itself when it takes at most this share of its free memory

ViewPair = tuple[torch.Tensor, torch.Tensor]
Views = tuple[torch.Tensor, ...]  # a step's views: a pair [B,...] each, or multi-crop groups [count·B,...] each


class ViewBatches(Protocol):
    """A view pipeline: the batches of view pairs of each epoch, for one process."""

    steps_per_epoch: int
    batch_size: int  # images per step on this process
    generator: torch.Generator | None  # the augmentation's random stream (checkpointed), if drawn in this process

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Views]: ...

    def set_step(self, step: int, total_steps: int | None) -> None:
        """Before a batch is drawn: the global step it is for, in a run of `total_steps` (resolution stages)."""


def epoch_sampler(size: int, seed: int, rank: int, world: int) -> DistributedSampler:
    """The images of an epoch for one process: shuffled by seed and epoch (`set_epoch`), one shard per rank."""
    return DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)


def view_seed(seed: int, rank: int) -> int:
    """The seed of one process's views: the one seeding convention of every view pipeline (each rank its own)."""
    return seed * 1000 + rank


def view_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The batched augmentation's random stream of one process."""
    return torch.Generator(device=device).manual_seed(view_seed(seed, rank))


def hold_in_memory(images: ImageSet, side: int, cache_dir: str | None) -> ImageSet:
    """`materialize_padded`, decoded once per machine: with a cache folder and several processes, each machine's
    first process decodes and writes the file while the others wait, then they all memory-map it (one copy in RAM)."""
    if cache_dir and distributed.world_size() > 1:
        if distributed.local_rank() == 0:
            held = materialize_padded(images, side, cache_dir)
        distributed.barrier()
        if distributed.local_rank() != 0:
            held = materialize_padded(images, side, cache_dir)  # finds the file just written
        return held
    return materialize_padded(images, side, cache_dir)


def fits_on_device(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether a GPU has room for `tensor` beside training (a share of its free memory); False for the CPU."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return tensor.numel() * tensor.element_size() <= GPU_RESIDENT_SHARE * free


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without making the host wait: a host tensor goes to a GPU through pinned memory in an
    asynchronous copy; a tensor already there (`cuda:0` for `cuda`) is returned as it is."""
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def stored_size_for(spec: AugmentSpec, views: MultiCrop | None = None) -> int:
    """The default stored side: large enough for every view group's smallest crop at its view size."""
    if views is None:
        return default_stored_size(spec.image_size, spec.crop_scale)
    return max(default_stored_size(group.size, group.scale) for group in views.groups)


class BatchedViews:
    """Index the decoded uint8 tensor and augment the whole batch at once where the model runs.

    Images are held whole (longer side at most `stored_size`, default from the view size and the smallest crop
    scale), padded, with their valid sizes. On a GPU the set lives on the device when it fits; otherwise it stays
    in (shared, memory-mapped) host memory and each batch is gathered there and copied asynchronously. A step
    makes no synchronising call: the epoch's order is copied to the device once, and BatchAugment draws on it.
    """

    def __init__(self, images: ImageSet, spec: AugmentSpec, *, batch_size: int, device: torch.device,
                 seed: int, rank: int = 0, world: int = 1, cache_dir: str | None = None,
                 stored_size: int | None = None, augment: BatchAugment | StagedAugment | MultiCropAugment | None = None) -> None:
        side = stored_size or default_stored_size(spec.image_size, spec.crop_scale)
        held = hold_in_memory(images, side, cache_dir)
        tensor, sizes = held.tensor, held.sizes
        assert tensor is not None
        if fits_on_device(tensor, device):
            tensor = tensor.to(device)
        self.images, self.device, self.batch_size = tensor, device, batch_size
        self.sizes = None if sizes is None else sizes.to(tensor.device)
        self.sampler = epoch_sampler(len(tensor), seed, rank, world)
        self.steps_per_epoch = len(self.sampler) // batch_size
        self.augment = augment or BatchAugment(spec)
        self.generator = view_generator(seed, rank, device)

    def set_step(self, step: int, total_steps: int | None) -> None:
        self.augment.set_step(step, total_steps)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Views]:
        """The epoch's batches from `start_step` on (a mid-epoch resume restores the generator's state there)."""
        self.sampler.set_epoch(epoch)
        order = _to_device(torch.tensor(list(self.sampler), dtype=torch.long), self.images.device)
        for step in range(start_step, self.steps_per_epoch):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            batch = _to_device(self.images[index], self.device)
            sizes = None if self.sizes is None else _to_device(self.sizes[index], self.device)
            yield self.augment.draw(batch, self.generator, sizes)


class _TwoViewDataset(Dataset):
    def __init__(self, images: ImageSet, views: TwoViews) -> None:
        self.images, self.views = images, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ViewPair:
        return self.views(self.images.image(index))


class PerImageViews:
    """The reference path: torchvision v2 per image in DataLoader workers, decoding files as it goes."""

    def __init__(self, images: ImageSet, spec: AugmentSpec, *, batch_size: int, device: torch.device,
                 seed: int, rank: int = 0, world: int = 1, workers: int | None = None) -> None:
        self.dataset = _TwoViewDataset(images, TwoViews(view_transform(spec)))
        self.sampler = epoch_sampler(len(images), seed, rank, world)
        self.steps_per_epoch = len(self.sampler) // batch_size
        self.batch_size, self.device, self.seed = batch_size, device, view_seed(seed, rank)
        self.workers = default_workers() if workers is None else workers
        self.generator = None

    def set_step(self, step: int, total_steps: int | None) -> None:
        """Every step draws from the same transform (resolution stages need the batched views)."""

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[ViewPair]:
        """The epoch's batches from `start_step` on; the first ones are still made and dropped, since the
        workers' random streams run from the epoch's start (exact, at the cost of re-augmenting them)."""
        self.sampler.set_epoch(epoch)
        # A new loader per epoch, seeded by the epoch, so worker RNG never depends on the past: resume is exact.
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.workers, drop_last=True,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.seed + epoch),
            prefetch_factor=4 if self.workers else None,
        )
        try:
            for first, second in itertools.islice(loader, start_step, None):
                yield first.to(self.device, non_blocking=True), second.to(self.device, non_blocking=True)
        except UserError as err:  # re-raised from a worker with its traceback text: keep the original line
            raise UserError(re.sub(r"^torchclr[\w.]*: ", "", str(err).strip().splitlines()[-1])) from None
