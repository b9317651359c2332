"""Labelled train/test images for the run: the kNN monitor every few epochs and the final report.

Small splits are held as uint8 centre views; large ones are read in batches at each use (see
`torchclr.evaluate.features`). The monitor compares against a bounded, seeded subset of the train split (the
bank), and under several processes every rank extracts its share of the features, gathered to all: no rank
waits idle on another's extraction.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchclr import distributed
from torchclr.data.plan import fits_in_memory
from torchclr.data.skips import BadFile, ReadPolicy
from torchclr.data.sources import ImageSet, has_split, open_images
from torchclr.errors import UserError
from torchclr.evaluate.features import extract_features, held_eval_set, streamed_views
from torchclr.evaluate.finetune import FinetuneSettings, finetune
from torchclr.evaluate.knn import accuracy, knn_predict
from torchclr.evaluate.linear import LinearSettings, linear_eval
from torchclr.evaluate.logreg import linear_probe
from torchclr.models import build_encoder
from torchclr.writer import write_json
from torchclr.models.encoders import CUSTOM_ARCH

LARGE_SET_KNN_EVERY = 10  # epochs between kNN monitors when the labelled data is read in batches


@dataclass
class EvalSplit:
    """One labelled split at evaluation resolution: `held` centre views when small, else read from `images`.

    A file that fails to decode is left out with its label: when the split is opened if it is held, else at the
    first use that reads it (`features`, `views`), from then on, with the same note. So every use returns the
    labels of the views it returns."""

    images: ImageSet
    labels: torch.Tensor
    image_size: int
    held: torch.Tensor | None
    split: str = ""

    @classmethod
    def open(cls, images: ImageSet, image_size: int, split: str = "") -> "EvalSplit":
        # Every process holds its own copy, so the share of memory is split between them.
        small = fits_in_memory(len(images) * 3 * image_size * image_size * distributed.world_size())
        held = None
        if small:  # decoded now: a file that fails is left out with its label, so labels and views stay aligned
            images, held = held_eval_set(images, image_size)
        opened = cls(images, torch.tensor(images.labels, dtype=torch.long), image_size, held, split)
        opened._note_skipped()
        return opened

    def __len__(self) -> int:
        return len(self.labels)

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All centre views as one uint8 tensor (fine-tuning indexes them at random), decoded now if not held, and
        their labels."""
        if self.held is not None:
            return self.held, self.labels
        before = len(self.images.skipped)
        held_set, views = held_eval_set(self.images, self.image_size)
        if len(self.images.skipped) > before:
            kept = set(held_set.names)
            self._keep([i for i, name in enumerate(self.images.names) if name in kept])
        return views, self.labels

    def features(self, encoder: nn.Module, device: torch.device, indices: torch.Tensor | None = None,
                 batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """h of the images at `indices` (default: all), in that order, and their labels; each process extracts every
        world-th one. Read in batches, a file that fails to decode is left out of both."""
        indices = torch.arange(len(self)) if indices is None else indices
        labels = self.labels[indices]
        world, rank = distributed.world_size(), distributed.rank()
        mine = indices[rank::world]
        if self.held is not None:
            features, decoded = extract_features(encoder, self.held[mine], device, batch_size), torch.ones(len(mine), dtype=torch.bool)
        else:
            flags: list[torch.Tensor] = []

            def batches() -> Iterator[torch.Tensor]:
                for views, ok in streamed_views(self.images, self.image_size, mine, batch_size):
                    flags.append(ok)
                    yield views

            features, decoded = extract_features(encoder, batches(), device, batch_size), torch.cat(flags)
        if world > 1:
            parts = distributed.all_gather_objects((features, decoded))
            features, decoded = features.new_empty(len(indices), features.shape[1]), decoded.new_empty(len(indices))
            for part_rank, (part, part_decoded) in enumerate(parts):
                features[part_rank::world], decoded[part_rank::world] = part, part_decoded
        if not decoded.all():
            self._leave_out(indices[~decoded].tolist())
        return features[decoded], labels[decoded]

    def _leave_out(self, failed: list[int]) -> None:
        """Record the files at `failed` (decoded by workers, which cannot hand their error back: decoded again for
        it) in the skip log, and drop them with their labels."""
        for index in failed:
            try:
                self.images.image(index)
            except BadFile as bad:
                self.images.skipped.add(bad)
        gone = set(failed)
        self._keep([i for i in range(len(self)) if i not in gone])

    def _keep(self, indices: list[int]) -> None:
        self.images, self.labels = self.images.subset(indices), self.labels[indices]
        self._note_skipped()

    def _note_skipped(self) -> None:
        skipped = self.images.skipped
        if skipped.entries and distributed.is_main_process():
            print(f"torchclr: note: evaluation data {self.images.origin} ({self.split}): "
                  f"{skipped.summary(len(self) + len(skipped))}; evaluating on the other {len(self):,}",
                  file=sys.stderr, flush=True)


def bank_indices(size: int, bank_size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subset of `bank_size` of `size` images (all of them when fewer)."""
    if size <= bank_size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:bank_size].sort().values


@dataclass
class LabelledEval:
    """Centre views of a labelled train split (the kNN bank / probe training set) and test split."""

    origin: str
    train: EvalSplit
    test: EvalSplit
    num_classes: int
    test_split: str = "test"
    batch_size: int = 512  # images per batch of feature extraction, and test images per kNN block: set by the memory plan
    knn_chunk: int = 1024

    @classmethod
    def open(cls, spec: str, image_size: int, download: bool = False, train_split: str = "train", test_split: str = "test",
             *, policy: ReadPolicy | None = None) -> "LabelledEval":
        """The labelled splits of `spec`, read as `policy` says (the run's --in-channels among others)."""
        train, test = open_images(spec, train_split, download, policy), open_images(spec, test_split, download, policy)
        for split, images in ((train_split, train), (test_split, test)):
            if not images.labelled:
                raise UserError(f"evaluation data {images.origin} ({split}) has no labels: it needs class sub-folders")
        if train.classes != test.classes:
            raise UserError(f"evaluation data {spec}: the {train_split} and {test_split} splits have different classes")
        return cls(spec, EvalSplit.open(train, image_size, train_split), EvalSplit.open(test, image_size, test_split),
                   len(train.classes), test_split)

    @property
    def streamed(self) -> bool:
        """Whether a split is read in batches at each use (too large to hold)."""
        return self.train.held is None or self.test.held is None

    def features(self, encoder: nn.Module, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """((train h, labels), (test h, labels))."""
        return self.train.features(encoder, device, batch_size=self.batch_size), self.test.features(encoder, device, batch_size=self.batch_size)

    def knn_top1(self, encoder: nn.Module, device: torch.device, k: int, temperature: float,
                 bank_size: int | None = None, seed: int = 0) -> float:
        """kNN top-1 (%) on the test split against a bank of at most `bank_size` training images."""
        bank = bank_indices(len(self.train), bank_size or len(self.train), seed)
        train, train_labels = self.train.features(encoder, device, bank, self.batch_size)
        test, test_labels = self.test.features(encoder, device, batch_size=self.batch_size)
        scores = knn_predict(train, train_labels, test, self.num_classes, k, temperature, self.knn_chunk, device=device)
        return accuracy(scores, test_labels)


def open_labelled_eval(config: Any) -> LabelledEval | None:
    """The explicit --eval-data, else --data when it has labelled train and test splits, else None."""
    if config.eval_data:
        return LabelledEval.open(config.eval_data, config.image_size, config.download, test_split=config.eval_split,
                                 policy=config.read_policy())
    if has_split(config.data, config.eval_split):
        try:
            return LabelledEval.open(config.data, config.image_size, config.download, test_split=config.eval_split,
                                     policy=config.read_policy())
        except UserError:
            return None
    return None


def knn_every(config: Any, labelled: LabelledEval) -> int:
    """--knn-every, or by default every epoch for data held in memory and every 10th for data read in batches."""
    if config.knn_every is not None:
        return config.knn_every
    return LARGE_SET_KNN_EVERY if labelled.streamed else 1


PROTOCOLS = {  # --protocol: what the tables call it (the paper's section in docs/evaluation.md)
    "linear": "linear evaluation (SGD on frozen h, random crops)",
    "logreg": "logistic regression (L-BFGS on frozen h)",
    "knn": "weighted kNN",
    "finetune": "fine-tuning",
}


def evaluate_encoders(labelled: LabelledEval, encoders: dict[str, nn.Module], device: torch.device, protocol: str,
                      knn_k: int = 200, knn_temperature: float = 0.1,
                      finetune_settings: FinetuneSettings | None = None,
                      linear_settings: LinearSettings | None = None) -> dict[str, dict[str, Any]]:
    """One protocol of `PROTOCOLS` for each named encoder, on the same images; each result names its protocol."""
    results: dict[str, dict[str, Any]] = {}
    for name, encoder in encoders.items():
        if protocol == "finetune":
            results[name] = finetune(encoder, *labelled.train.views(), *labelled.test.views(), labelled.num_classes,
                                     finetune_settings or FinetuneSettings(), device)
        elif protocol == "linear":
            test, test_labels = labelled.test.features(encoder, device, batch_size=labelled.batch_size)
            results[name] = linear_eval(encoder, *labelled.train.views(), test, test_labels, labelled.num_classes,
                                        linear_settings or LinearSettings(), device, labelled.batch_size)
        else:
            (train, train_labels), (test, test_labels) = labelled.features(encoder, device)
            if protocol == "logreg":
                results[name] = asdict(linear_probe(train, train_labels, test, test_labels, labelled.num_classes))
            else:
                scores = knn_predict(train, train_labels, test, labelled.num_classes, knn_k, knn_temperature,
                                     labelled.knn_chunk, device=device)
                results[name] = {"top1": accuracy(scores, test_labels, 1), "top5": accuracy(scores, test_labels, 5)}
        results[name]["protocol"] = protocol
    return results


def format_table(results: dict[str, dict[str, float]], title: str, labelled: LabelledEval) -> str:
    lines = [f"{title} on {labelled.origin} ({labelled.test_split} split)", f"{'encoder':<28}{'top-1 %':>9}{'top-5 %':>9}"]
    lines += [f"{name:<28}{r['top1']:>9.2f}{r['top5']:>9.2f}" for name, r in results.items()]
    first = next(iter(results.values()))
    if first.get("protocol") == "linear":
        lines.append(f"({first['epochs']:.0f} epochs, batch {first['batch_size']:.0f}, lr {first['lr']:.3g}: Nesterov SGD, cosine decay)")
    return "\n".join(lines)


def random_twin(encoder: nn.Module, config: Any) -> nn.Module:
    """The same architecture with freshly initialised weights: the baseline a representation must beat."""
    torch.manual_seed(config.seed)
    device = next(encoder.parameters()).device
    if config.arch == CUSTOM_ARCH:  # a user's module: the same module with each layer's own initialisation
        twin = copy.deepcopy(encoder)
        for module in twin.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return twin
    return build_encoder(config.arch, config.image_size, config.cifar_stem, in_channels=config.in_channels).to(device)


def final_report(labelled: LabelledEval, encoder: nn.Module, config: Any, device: torch.device, run_dir: Path) -> dict:
    """--final-protocol (logreg or linear) of the trained encoder beside random weights; printed and saved as
    linear_eval.json (each result names its protocol) by rank 0.

    A collective under several processes: every rank extracts its share of the features."""
    protocol = config.final_protocol
    encoders = {"SimCLR (this run)": encoder, "random weights": random_twin(encoder, config)}
    results = evaluate_encoders(labelled, encoders, device, protocol, linear_settings=LinearSettings(seed=config.seed))
    if distributed.is_main_process():
        print(format_table(results, f"{PROTOCOLS[protocol]} (--final-protocol {protocol})", labelled), flush=True)
        write_json(run_dir / "linear_eval.json", results, what="the final evaluation")
    return results
