"""Labelled train/test images held once for the whole run: the per-epoch kNN monitor and the final report."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchclr.data.sources import ImageSet, has_split, open_images
from torchclr.errors import UserError
from torchclr.evaluate.features import eval_images, extract_features
from torchclr.evaluate.finetune import FinetuneSettings, finetune
from torchclr.evaluate.knn import accuracy, knn_predict
from torchclr.evaluate.linear import linear_probe
from torchclr.models import build_encoder
from torchclr.models.encoders import CUSTOM_ARCH


@dataclass
class LabelledEval:
    """Centre views of a labelled train split (the kNN bank / probe training set) and test split."""

    origin: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    test_split: str = "test"
    batch_size: int = 512  # images per batch of feature extraction, and test images per kNN block: set by the memory plan
    knn_chunk: int = 1024

    @classmethod
    def open(cls, spec: str, image_size: int, download: bool = False, train_split: str = "train", test_split: str = "test") -> "LabelledEval":
        train, test = open_images(spec, train_split, download), open_images(spec, test_split, download)
        for split, images in ((train_split, train), (test_split, test)):
            if not images.labelled:
                raise UserError(f"evaluation data {images.origin} ({split}) has no labels: it needs class sub-folders")
        if train.classes != test.classes:
            raise UserError(f"evaluation data {spec}: the {train_split} and {test_split} splits have different classes")
        return cls(spec, eval_images(train, image_size), _labels(train), eval_images(test, image_size), _labels(test),
                   len(train.classes), test_split)

    def features(self, encoder: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (extract_features(encoder, self.train_images, device, self.batch_size),
                extract_features(encoder, self.test_images, device, self.batch_size))

    def knn_top1(self, encoder: nn.Module, device: torch.device, k: int, temperature: float) -> float:
        train, test = self.features(encoder, device)
        scores = knn_predict(train, self.train_labels, test, self.num_classes, k, temperature, self.knn_chunk)
        return accuracy(scores, self.test_labels)


def _labels(images: ImageSet) -> torch.Tensor:
    return torch.tensor(images.labels, dtype=torch.long)


def open_labelled_eval(config: Any) -> LabelledEval | None:
    """The explicit --eval-data, else --data when it has labelled train and test splits, else None."""
    if config.eval_data:
        return LabelledEval.open(config.eval_data, config.image_size, config.download, test_split=config.eval_split)
    if has_split(config.data, config.eval_split):
        try:
            return LabelledEval.open(config.data, config.image_size, config.download, test_split=config.eval_split)
        except UserError:
            return None
    return None


def evaluate_encoders(labelled: LabelledEval, encoders: dict[str, nn.Module], device: torch.device, protocol: str,
                      knn_k: int = 200, knn_temperature: float = 0.1,
                      finetune_settings: FinetuneSettings | None = None) -> dict[str, dict[str, float]]:
    """Linear probe, kNN or fine-tuning on a share of the labels, for each named encoder, on the same images."""
    results = {}
    for name, encoder in encoders.items():
        if protocol == "finetune":
            results[name] = finetune(encoder, labelled.train_images, labelled.train_labels, labelled.test_images,
                                     labelled.test_labels, labelled.num_classes, finetune_settings or FinetuneSettings(), device)
            continue
        train, test = labelled.features(encoder, device)
        if protocol == "linear":
            result = linear_probe(train, labelled.train_labels, test, labelled.test_labels, labelled.num_classes)
            results[name] = asdict(result)
        else:
            scores = knn_predict(train, labelled.train_labels, test, labelled.num_classes, knn_k, knn_temperature)
            results[name] = {"top1": accuracy(scores, labelled.test_labels, 1), "top5": accuracy(scores, labelled.test_labels, 5)}
    return results


def format_table(results: dict[str, dict[str, float]], title: str, labelled: LabelledEval) -> str:
    lines = [f"{title} on {labelled.origin} ({labelled.test_split} split)", f"{'encoder':<28}{'top-1 %':>9}{'top-5 %':>9}"]
    lines += [f"{name:<28}{r['top1']:>9.2f}{r['top5']:>9.2f}" for name, r in results.items()]
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
    return build_encoder(config.arch, config.image_size, config.cifar_stem).to(device)


def final_report(labelled: LabelledEval, encoder: nn.Module, config: Any, device: torch.device, run_dir: Path) -> dict:
    """Linear probe of the trained encoder beside random weights; printed and saved as linear_eval.json."""
    results = evaluate_encoders(labelled, {"SimCLR (this run)": encoder, "random weights": random_twin(encoder, config)}, device, "linear")
    print(format_table(results, "linear evaluation", labelled), flush=True)
    (run_dir / "linear_eval.json").write_text(json.dumps(results, indent=2))
    return results
