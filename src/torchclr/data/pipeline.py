"""The view-pipeline factory: from a config and its images to the batches of view pairs training draws.

One place decides the view size from the data, per-image (the reference) or batched views, in memory or
streamed, and the augmentation with its resolution stages; training and the report's preview both build their
views here, so the report shows what training saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from torchclr.data.loaders import BatchedViews, PerImageViews, ViewBatches, stored_size_for
from torchclr.data.plan import choose_mode, default_image_size
from torchclr.data.sources import ImageSet
from torchclr.data.streaming import StreamedViews
from torchclr.errors import UserError
from torchclr.runtime import say
from torchclr.transforms import BatchAugment, StagedAugment
from torchclr.transforms.ablation import AblationOps
from torchclr.transforms.batched import MultiCropAugment


def with_image_size(config: Any, sizes: list[tuple[int, int]]) -> Any:
    """The config with --image-size set: as given, the large views' size (--views), the last resolution stage, or from the data (a folder of photos
    gets photo-sized views; `sizes`: image sizes sampled from it)."""
    if config.image_size is not None:
        return config
    views = config.view_groups()
    if views is not None:
        return dataclasses.replace(config, image_size=views.large_size)
    schedule = config.resolution()
    if schedule is not None:
        return dataclasses.replace(config, image_size=schedule.final_size)
    size = default_image_size(sizes)
    if sizes:  # none: no sampled header was usable, and decoding will say why in one line
        longest = sorted(max(s) for s in sizes)
        say(f"image size: {size} px, from the data (longer sides of {len(sizes)} sampled images: "
            f"{longest[0]}-{longest[-1]} px, median {longest[len(longest) // 2]}); set --image-size to change it")
    return dataclasses.replace(config, image_size=size)


def batch_augment(config: Any, ablation: AblationOps | None = None) -> BatchAugment | StagedAugment | MultiCropAugment:
    """The batched augmentation of a run: two views, one pair per resolution stage, or the multi-crop groups;
    `ablation`: figure 5's extra ops (`torchclr ablate`), for two views only."""
    spec, schedule, views = config.augment_spec(), config.resolution(), config.multi_crop()
    if views is not None:
        if ablation:
            raise UserError(f"--views {config.views}: the figure 5 ablation's ops apply to two views only")
        return MultiCropAugment(spec, views)
    if schedule is None:
        return BatchAugment(spec, ablation=ablation)
    return StagedAugment(schedule.stage_specs(spec), schedule.stage_at, ablation=ablation)


def stored_side(config: Any) -> int:
    """--stored-size, or the side each image is held at for every view's smallest crop at its size."""
    return config.stored_size or stored_size_for(config.augment_spec(), config.multi_crop())


def _per_process_batch(config: Any, images: ImageSet, world: int) -> int:
    """Images per process of --batch-size over `world` processes; refused where a process gets fewer than 2."""
    per_process = config.batch_size // world
    if per_process * world != config.batch_size:
        raise UserError(f"--batch-size {config.batch_size} must be a multiple of the number of processes ({world})")
    if per_process < 2:
        raise UserError(f"--batch-size {config.batch_size} over {world} processes leaves {per_process} image per process; "
                        "each needs at least 2")
    if len(images) < config.batch_size:
        raise UserError(f"data {images.origin} has {len(images)} images, fewer than --batch-size {config.batch_size}")
    return per_process


def build_view_batches(config: Any, images: ImageSet, sizes: list[tuple[int, int]], device: torch.device, *,
                       rank: int, world: int, ablation: AblationOps | None = None) -> ViewBatches:
    """Per image in workers (--augment-mode per-image), or batched from memory or streamed, as --data-mode says
    or the data fit. `config.image_size` must be set (`with_image_size`); `ablation`: see `batch_augment`."""
    per_process = _per_process_batch(config, images, world)
    spec = config.augment_spec()
    if config.augment_mode == "per-image" and ablation:
        raise UserError("the figure 5 ablation's ops (cutout, Sobel, noise, rotation, one branch) need --augment-mode batched")
    if config.augment_mode == "per-image":
        say(f"data: {len(images):,} images in {images.origin}, decoded per image in workers (--augment-mode per-image)")
        return PerImageViews(images, spec, batch_size=per_process, device=device, seed=config.seed, rank=rank, world=world,
                             workers=config.workers)
    views = config.multi_crop()
    if views is not None:
        say(f"views: {views.describe()}: {views.views} per image (--views {config.views})")
    stored = stored_side(config)
    plan = choose_mode("memory" if images.tensor is not None else config.data_mode, len(images), stored, sizes,
                       channels=config.in_channels)
    say(f"data: {len(images):,} images in {images.origin}, {'streamed' if plan.mode == 'stream' else 'in memory'}: {plan.reason}")
    augment = batch_augment(config, ablation)
    schedule = config.resolution()
    if schedule is not None:
        say(schedule.describe())
    if plan.mode != "stream":
        return BatchedViews(images, spec, batch_size=per_process, device=device, seed=config.seed, rank=rank, world=world,
                            cache_dir=config.cache_dir, stored_size=stored, augment=augment)
    on_device = config.in_channels == 3 and (config.decode == "device" or (config.decode == "auto" and device.type == "cuda"))
    say(f"data: JPEGs decoded {f'on {device} in batches' if on_device else 'in DataLoader workers'} (--decode {config.decode})")
    return StreamedViews(images, spec, batch_size=per_process, device=device, seed=config.seed, stored_side=stored,
                         rank=rank, world=world, workers=config.workers, jpegs_on_device=on_device, augment=augment)
