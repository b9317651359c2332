"""Health during training: a fixed slice of view pairs (`HealthMonitor`), a collapse alarm (`CollapseWatch`), and
what the training loop calls once per epoch (`EpochHealth`: measure, warn, keep the best checkpoint, stop).

The slice is drawn once, seeded, from the training images and augmented once with the run's own augmentation;
the same pixels are measured every epoch, so the numbers move only with the weights. The images stay in the
training set: the metrics judge the geometry of the representation, not generalisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchclr import checkpoint, distributed
from torchclr.data.cache import default_stored_size, fit_within, pad_to
from torchclr.data.skips import BadFile
from torchclr.data.sources import ImageSet
from torchclr.errors import UserError
from torchclr.health import HEALTH_METRICS, KEEP_BEST_HIGHER
from torchclr.health.measures import chance_top1, health_metrics
from torchclr.transforms import AugmentSpec, BatchAugment
from torchclr.writer import write_bytes

SLICE_IMAGES = 512
COLLAPSE_FRACTION = 0.1  # std_h or std_z below this share of its first measured value is a (complete) collapse
# rank_h below this share of its best so far is a dimensional collapse: measured (docs/health.md), a healthy
# quickstart run stays above 0.82 of its best, one made to collapse (--temperature 100) falls to 0.23 at epoch 4
RANK_FRACTION = 0.25
CHANCE_MARGIN = 2.0  # view_top1 at most this many times chance is a collapse, once it was clearly above chance:
ABOVE_CHANCE_MARGIN = 4.0  # more than this many times chance (a gap between the two, so that noise does not arm it)
BEST_FILE = "best.safetensors"


@dataclass
class HealthMonitor:
    """Two fixed augmented views (uint8 [N, C, S, S]) of N training images; `measure(model)` gives the metrics."""

    first: torch.Tensor
    second: torch.Tensor
    batch_size: int = 256

    @classmethod
    def from_images(cls, images: ImageSet, spec: AugmentSpec, *, count: int = SLICE_IMAGES, seed: int = 0) -> HealthMonitor:
        """A seeded slice of `count` images (all when fewer; unreadable ones are passed over), each augmented twice
        by `spec` with a generator seeded by `seed`."""
        side = default_stored_size(spec.image_size, spec.crop_scale)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
        picked: list[torch.Tensor] = []
        for index in order:
            try:
                picked.append(fit_within(images.image(index), side))
            except BadFile:
                continue
            if len(picked) == count:
                break
        if len(picked) < 2:
            raise UserError(f"data {images.origin}: the health metrics need at least 2 readable images, found {len(picked)}")
        sizes = torch.tensor([image.shape[-2:] for image in picked], dtype=torch.int32)
        padded = int(sizes.max())
        batch = torch.stack([pad_to(image, padded) for image in picked])
        first, second = BatchAugment(spec).two_views(batch, torch.Generator().manual_seed(seed), sizes)
        return cls(_to_uint8(first), _to_uint8(second))

    def __len__(self) -> int:
        return len(self.first)

    @property
    def chance(self) -> float:
        return chance_top1(len(self))

    @torch.no_grad()
    def measure(self, model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
        """The metrics of `model` (a SimCLR network: images -> (h, z)) in eval mode (BN running statistics, so an
        image's embedding does not depend on the rest of its batch)."""
        was_training = model.training
        model.eval()
        try:
            h1, z1 = self._embed(model, self.first, device, autocast_dtype)
            h2, z2 = self._embed(model, self.second, device, autocast_dtype)
        finally:
            model.train(was_training)
        return health_metrics(h1, h2, z1, z2)

    def _embed(self, model: nn.Module, views: torch.Tensor, device: torch.device,
               autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        hs, zs = [], []
        for start in range(0, len(views), self.batch_size):
            batch = views[start : start + self.batch_size].to(device).float().div_(255)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                h, z = model(batch)
            hs.append(h.float().cpu())
            zs.append(z.float().cpu())
        return torch.cat(hs), torch.cat(zs)


def _to_uint8(views: torch.Tensor) -> torch.Tensor:
    return views.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


@dataclass
class CollapseWatch:
    """Says, once, when the representation collapsed: std_h or std_z below `fraction` of its first measured value,
    rank_h below `RANK_FRACTION` of its best so far (the embeddings squeezed into a few directions while each still
    varies), or view_top1 back at most `CHANCE_MARGIN` x chance after it was once above `ABOVE_CHANCE_MARGIN` x chance.

    Retrieval at chance before training has taught anything is normal (an untrained network, or the first epochs
    of a slow start), not a collapse: only a fall back to chance is.
    """

    chance: float
    fraction: float = COLLAPSE_FRACTION
    reference: dict[str, float] | None = None
    collapsed_at: int | None = None
    was_above_chance: bool = False  # view_top1 was once above ABOVE_CHANCE_MARGIN x chance
    best_rank: float = 0.0

    def reasons(self, metrics: dict[str, float]) -> list[str]:
        """Why `metrics` show a collapse (empty when they do not)."""
        found = []
        if self.reference is not None:
            for name in ("std_h", "std_z"):
                start = self.reference[name]
                if start > 0 and metrics[name] < self.fraction * start:
                    found.append(f"{name} {metrics[name]:.3g} is {metrics[name] / start:.1%} of its first value {start:.3g}")
        if metrics["rank_h"] < RANK_FRACTION * self.best_rank:
            found.append(f"rank_h {metrics['rank_h']:.3g} is {metrics['rank_h'] / self.best_rank:.1%} of its best "
                         f"{self.best_rank:.3g}")
        if self.was_above_chance and metrics["view_top1"] <= CHANCE_MARGIN * self.chance:
            found.append(f"view_top1 {metrics['view_top1']:.3g}% is at chance ({self.chance:.3g}%)")
        return found

    def observe(self, epoch: int, metrics: dict[str, float]) -> str | None:
        """One warning line the first time `metrics` (after `epoch` epochs) show a collapse, else None."""
        if self.reference is None:
            self.reference = dict(metrics)
        found = self.reasons(metrics)
        self.was_above_chance = self.was_above_chance or metrics["view_top1"] > ABOVE_CHANCE_MARGIN * self.chance
        self.best_rank = max(self.best_rank, metrics["rank_h"])
        if not found or self.collapsed_at is not None:
            return None
        self.collapsed_at = epoch
        return f"warning: the representation collapsed by epoch {epoch}: {'; '.join(found)}"


@dataclass
class Verdict:
    """What the epoch's health asks of the training loop."""

    warning: str | None = None
    stop: bool = False  # --stop-on-collapse and a collapse: end the run, keep the last healthy checkpoint
    best: bool = False  # --keep-best: this epoch's checkpoint is the best so far


@dataclass
class EpochHealth:
    """The training loop's hook: `after_epoch` once per epoch, after the kNN monitor, before the checkpoint."""

    monitor: HealthMonitor | None
    every: int
    keep_best: str | None = None
    stop_on_collapse: bool = False
    watch: CollapseWatch | None = None
    best_value: float | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_run(cls, config: Any, images: ImageSet, labelled: bool) -> EpochHealth | None:
        """From the run's --health-every, --keep-best and --stop-on-collapse (None when all are off); `labelled`:
        whether the kNN monitor runs (for --keep-best knn_top1)."""
        if config.keep_best == "knn_top1" and not labelled:
            raise UserError("--keep-best knn_top1 needs labelled evaluation data (--eval-data) and the kNN monitor; "
                            f"without labels choose one of {', '.join(k for k in KEEP_BEST_HIGHER if k != 'knn_top1')}")
        uses_health = config.stop_on_collapse or config.keep_best in HEALTH_METRICS
        if uses_health and config.health_every == 0:
            raise UserError("--stop-on-collapse and --keep-best by a health metric need --health-every above 0")
        if config.health_every == 0 and config.keep_best is None:
            return None
        monitor = None
        if config.health_every:
            spec = dataclasses.replace(config.augment_spec(), image_size=config.image_size)
            monitor = HealthMonitor.from_images(images, spec, seed=config.seed)
        watch = CollapseWatch(monitor.chance) if monitor is not None else None
        return cls(monitor, config.health_every, config.keep_best, config.stop_on_collapse, watch)

    def after_epoch(self, epochs_done: int, model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None,
                    record: dict[str, Any]) -> Verdict:
        """Measure (when due), add the metrics to `record`, and judge. Rank 0's numbers are every rank's verdict."""
        verdict = Verdict()
        if self.monitor is not None and self.watch is not None and epochs_done % self.every == 0:
            metrics = self.monitor.measure(model, device, autocast_dtype) if distributed.is_main_process() else {}
            metrics = distributed.all_gather_objects(metrics)[0]
            record.update(metrics)
            verdict.warning = self.watch.observe(epochs_done, metrics)
            verdict.stop = self.stop_on_collapse and verdict.warning is not None
        if self.keep_best is not None and self.keep_best in record and not verdict.stop:
            value, higher = record[self.keep_best], KEEP_BEST_HIGHER[self.keep_best]
            if self.best_value is None or (value > self.best_value if higher else value < self.best_value):
                self.best_value, verdict.best = value, True
        return verdict


def keep_as_best(saved: Path, run_dir: Path) -> Path:
    """Copy the epoch's checkpoint to RUN_DIR/best.safetensors (through the writer: never half a file)."""
    target = run_dir / BEST_FILE
    write_bytes(target, saved.read_bytes(), what="the best checkpoint")
    return target


def restore_last_healthy(model: nn.Module, latest: Path | None, epoch: int) -> str:
    """--stop-on-collapse: put the weights of the latest checkpoint (saved before the collapse was seen) back into
    `model`, so that encoder.safetensors and the final report are of them; returns the line that says so."""
    if latest is None:
        return (f"--stop-on-collapse: stopped at epoch {epoch}; no checkpoint was saved before the collapse, so the "
                "run keeps its present weights")
    tensors, _ = checkpoint.load(latest)
    checkpoint.load_model_state(model, checkpoint.model_tensors(tensors), latest, "the last healthy checkpoint")
    return (f"--stop-on-collapse: stopped at epoch {epoch}; the collapsed state was not saved; the last healthy "
            f"checkpoint {latest} is kept and its weights are the run's encoder")
