"""`torchclr.evaluate`: a trained encoder under one of the paper's protocols, beside its baselines, from Python.

The command `torchclr evaluate` is this function and a printed table; scripts and notebooks call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchclr.evaluate.finetune import FinetuneSettings
from torchclr.evaluate.linear import LinearSettings
from torchclr.options import check_number


@dataclass(frozen=True)
class Evaluation:
    """`results`: encoder name ('SimCLR', 'random weights') -> top1, top5 (%) and the protocol's details;
    `table`: the same as the command prints it."""

    results: dict[str, dict[str, Any]]
    table: str


def evaluate(checkpoint: str | Path, *, protocol: str = "linear", data: str | None = None, eval_split: str | None = None,
             compare_random: bool = True, compare_init: bool = False, device: str = "auto", knn_k: int = 200,
             knn_temperature: float = 0.1,
             linear: LinearSettings | None = None, finetune: FinetuneSettings | None = None,
             download: bool = False) -> Evaluation:
    """Evaluate the encoder of `checkpoint` (an encoder file or a training checkpoint) on labelled data: its frozen h
    (`protocol` 'linear', 'logreg', 'knn') or the whole encoder fine-tuned on a share of the labels ('finetune').

    `data`: labelled data with train/test splits (default: the data the checkpoint was trained on; another set
    measures transfer); `eval_split`: the split reported on (default: the run's for its own data, 'test' for other
    data). With `compare_random`, the same architecture with random weights is evaluated beside it; with
    `compare_init`, the weights the run started from (its --init): did pretraining beat its start?
    """
    from torchclr.evaluate.monitor import PROTOCOLS, LabelledEval, evaluate_encoders, format_table, random_twin
    from torchclr.init_weights import initial_encoder
    from torchclr.pretrained import load_encoder
    from torchclr.runtime import resolve_device

    linear, finetune = linear or LinearSettings(), finetune or FinetuneSettings()
    _check(protocol, knn_k, knn_temperature)
    target = resolve_device(device)
    encoder, _, meta = load_encoder(checkpoint)
    config = meta["config"]
    labelled = LabelledEval.open(data or config.eval_data or config.data, config.image_size, download,
                                 test_split=eval_split or (config.eval_split if not data else "test"), policy=config.read_policy())
    encoders = {"SimCLR": encoder.to(target)}
    if compare_random:
        encoders["random weights"] = random_twin(encoders["SimCLR"], config)
    if compare_init:
        encoders[f"initial weights (--init {config.init})"] = initial_encoder(config, checkpoint, download=download).to(target)
    results = evaluate_encoders(labelled, encoders, target, protocol, knn_k, knn_temperature, finetune, linear)
    what = f"fine-tuning on {finetune.label_fraction:.3g} of the labels" if protocol == "finetune" else PROTOCOLS[protocol]
    return Evaluation(results, format_table(results, f"{what} of {checkpoint}", labelled))


def _check(protocol: str, knn_k: int, knn_temperature: float) -> None:
    """The options not held by the settings objects (which check their own), before any work."""
    from torchclr.errors import UserError
    from torchclr.evaluate.monitor import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    check_number("--knn-k", knn_k, low=0, low_open=True)
    check_number("--knn-temperature", knn_temperature, low=0, low_open=True)
