"""`torchclr report RUN_DIR`: what a run learned, on one offline HTML page with its PNGs beside it.

Curves come from metrics.jsonl; the augmentation preview re-creates the run's first training batch (the sampler,
generator and augmentation of `data.pipeline`, at the first step's resolution stage, every multi-crop view
included); the 2-D map, the per-class accuracy (the kNN monitor
recomputed with the final encoder, so its mean is the last monitored top-1) and the nearest-neighbour examples
use the run's encoder on its labelled evaluation data. An unlabelled run shows its training images instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from torchclr.config import PretrainConfig, from_dict
from torchclr.data.cache import materialize_padded
from torchclr.data.loaders import epoch_sampler, view_generator
from torchclr.data.pipeline import batch_augment, stored_side
from torchclr.data.sources import open_images
from torchclr.errors import UserError
from torchclr.report import page, plots
from torchclr.report.projection import project_2d
from torchclr.writer import write_text

PREVIEW_PAIRS = 8
EXAMPLE_QUERIES = 6
EXAMPLE_NEIGHBOURS = 8


def read_run(run_dir: Path) -> tuple[PretrainConfig, list[dict[str, Any]]]:
    """The run's config and metric records; a folder that is not a run is a UserError naming what is missing."""
    metrics, config_file = run_dir / "metrics.jsonl", run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    for needed in (metrics, config_file):
        if not needed.is_file():
            raise UserError(f"run folder {run_dir} has no {needed.name} (give the --out-dir of a torchclr pretrain run)")
    try:
        config = from_dict(yaml.safe_load(config_file.read_text()) or {}, f"run folder {run_dir}")
    except yaml.YAMLError as err:
        raise UserError(f"run folder {run_dir}: cannot read its config: {err}") from None
    lines = [line for line in metrics.read_text(errors="replace").splitlines() if line.strip()]
    records = [record for record in map(_metric_record, lines) if record is not None]
    if len(records) < len(lines):
        _note(f"{metrics}: skipped {len(lines) - len(records)} of {len(lines)} lines that are not metric records "
              "(not a JSON object, or a step, epoch or value that is not a number)")
    if not records:
        raise UserError(f"run folder {run_dir}: metrics.jsonl holds no metric record (the run logged no step yet)")
    return config, records


NUMERIC_METRICS = ("step", "epoch", "loss", "lr", "knn_top1")


def _metric_record(line: str) -> dict[str, Any] | None:
    """The record on one line of metrics.jsonl, or None when it is not one (cut, not an object, wrongly typed)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    numbers_ok = all(isinstance(record[key], (int, float)) and not isinstance(record[key], bool)
                     for key in NUMERIC_METRICS if key in record)
    return record if numbers_ok else None


def _note(text: str) -> None:
    print(f"torchclr: note: {text}", file=sys.stderr, flush=True)


def first_batch_views(config: PretrainConfig, pairs: int = PREVIEW_PAIRS) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(images, [view 1, view 2, ...]) of the first `pairs` images of the run's first step on a single process: two
    views, or every view of a multi-crop run (--views), large ones first, each [pairs, 3, S, S] at its own size.

    Batched mode draws the whole first batch with the run's augmentation (its first resolution stage) and generator,
    as the view pipeline's first step does on the CPU; per-image mode draws the run's transform afresh (its worker
    RNG is not replayed).
    """
    from torchclr.transforms import TwoViews, view_transform

    images = open_images(config.data, config.train_split, config.download, config.read_policy())
    sampler = epoch_sampler(len(images), config.seed, rank=0, world=1)
    sampler.set_epoch(0)
    batch_size = min(config.batch_size, len(images))
    first = list(sampler)[:batch_size]
    spec = config.augment_spec()
    held = materialize_padded(images.subset(first), stored_side(config))  # as the training path holds them
    batch = held.tensor
    assert batch is not None
    if config.augment_mode == "batched":
        drawn = batch_augment(config).draw(batch, view_generator(config.seed, 0, torch.device("cpu")), held.sizes)
        each_view = [view for group in drawn for view in group.split(len(batch))]  # view-major groups, view by view
    else:
        torch.manual_seed(config.seed)
        whole = (held.image(index) for index in range(min(pairs, len(batch))))  # each image without its padding
        each_view = [torch.stack(v) for v in zip(*(TwoViews(view_transform(spec))(image) for image in whole))]
    return batch[:pairs], [view[:pairs] for view in each_view]


def _as_uint8(views: torch.Tensor) -> torch.Tensor:
    return views.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def build_report(run_dir: str | Path, device: str = "auto", max_points: int = 2000) -> Path:
    """Write RUN_DIR/report/index.html and its PNGs; returns the page's path."""
    from torchclr.evaluate.features import eval_images, extract_features
    from torchclr.evaluate.knn import knn_predict
    from torchclr.evaluate.monitor import bank_indices, open_labelled_eval
    from torchclr.neighbors import contact_sheet, nearest
    from torchclr.pretrained import load_encoder
    from torchclr.runtime import resolve_device

    if max_points < 2:
        raise UserError(f"--max-points must be at least 2, got {max_points}")
    run_dir = Path(run_dir)
    config, records = read_run(run_dir)
    plots.pyplot()  # before any work: a missing extra is said at once
    encoder_file = run_dir / "encoder.safetensors"
    checkpoint = encoder_file if encoder_file.is_file() else _latest_checkpoint(run_dir)
    encoder = load_encoder(checkpoint).encoder if checkpoint is not None else None  # a bad file: one line, nothing written
    originals, views = first_batch_views(config)  # data with nothing usable: one line, nothing written
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    target = resolve_device(device)
    sections = [page.section("Run", page.table(_summary(run_dir, config, records)))]

    shown = plots.curves(records, out / "curves.png")
    if shown:
        sections.append(page.section("Training curves", page.image("curves.png", ", ".join(shown))))

    drawn = plots.health(records, out / "health.png")
    if drawn:
        sections.append(page.section("Representation health (no labels)", page.image("health.png", ", ".join(drawn))
                                     + page.table(_health_rows(records, drawn), ("metric", "first, last and best epoch")),
                                     "Measured on a fixed slice of training images, two fixed views each; docs/health.md "
                                     "says what each means and what a healthy run shows."))

    captions = [f"view {number} ({view.shape[-1]} px)" for number, view in enumerate(views, start=1)]
    contact_sheet([((image, "image"), [(view, caption) for view, caption in zip(image_views, captions)])
                   for image, *image_views in zip(originals, *(_as_uint8(view) for view in views))], out / "views.png")
    sections.append(page.section("Augmentation preview", page.image("views.png", "views"),
                                 f"The first {len(originals)} images of the run's first step and the {len(views)} views "
                                 f"the {config.augment_mode} training path made of them (seed {config.seed}"
                                 + (f"; --views {config.views}" if config.multi_crop() else "") + ")."))

    if encoder is None:
        sections.append(page.section("Representation", "<p>No encoder yet: the run has written no checkpoint.</p>"))
        return _write(out, config, sections)
    encoder = encoder.to(target)
    labelled = open_labelled_eval(config)
    if labelled is not None:
        (train_views, _), (query_images, _) = labelled.train.views(), labelled.test.views()  # first: leaves out what fails
        in_bank = bank_indices(len(labelled.train), config.knn_bank_size, config.seed)  # the monitor's own bank
        train, train_labels = labelled.train.features(encoder, target, in_bank)
        test, test_labels = labelled.test.features(encoder, target)
        scores = knn_predict(train, train_labels, test, labelled.num_classes, config.knn_k, config.knn_temperature,
                             device=target)
        classes = open_images(labelled.origin, "train", policy=config.read_policy()).classes
        correct = scores.argmax(1) == test_labels
        per_class = {name: 100.0 * correct[test_labels == c].float().mean().item() for c, name in enumerate(classes)}
        plots.per_class_bars(per_class, out / "per_class.png")
        overall = 100.0 * correct.float().mean().item()
        sections.append(page.section(
            "Accuracy per class", page.image("per_class.png", "per-class accuracy") +
            page.table([(k, f"{v:.1f}") for k, v in per_class.items()] + [("all", f"{overall:.2f}")], ("class", "kNN top-1 %")),
            f"Weighted kNN (k = {config.knn_k}, T = {config.knn_temperature}) of {checkpoint.name} on {labelled.origin} "
            f"({labelled.test_split} split), as the run's monitor measures it."))
        bank_images = train_views[in_bank]
        bank, queries, query_labels = train, test, test_labels.numpy()
        what = f"{labelled.test_split} images"
    else:
        images = open_images(config.data, config.train_split, config.download, config.read_policy())
        chosen = np.linspace(0, len(images) - 1, min(max_points, len(images))).round().astype(int).tolist()
        bank_images = query_images = eval_images(images.subset(chosen), config.image_size)
        bank = queries = extract_features(encoder, bank_images, target)
        query_labels, classes, what = None, [], "training images (the run has no labelled evaluation data)"

    shown_points = np.linspace(0, len(queries) - 1, min(max_points, len(queries))).round().astype(int)
    points, method = project_2d(queries[shown_points].numpy(), config.seed)
    plots.scatter(points, None if query_labels is None else query_labels[shown_points], classes,
                  f"{method} of h, {len(shown_points):,} {what}", out / "map.png")
    sections.append(page.section("Map of the representation", page.image("map.png", method),
                                 f"{method} of the encoder's h for {len(shown_points):,} {what}."
                                 + (" UMAP replaces PCA where umap-learn is installed: pip install 'torchclr[report]'." if method == "PCA" else "")))

    picks = np.linspace(0, len(queries) - 1, min(EXAMPLE_QUERIES, len(queries))).round().astype(int)
    exclude = picks if labelled is None else None
    k = min(EXAMPLE_NEIGHBOURS, len(bank) - (1 if exclude is not None else 0))
    found = nearest(bank.numpy(), queries[picks].numpy(), k, device=target, exclude=exclude)
    bank_labels = train_labels.numpy() if labelled is not None else None

    def caption(labels: np.ndarray | None, index: int, prefix: str) -> str:
        return f"{prefix} {classes[int(labels[index])]}" if labels is not None else prefix

    contact_sheet([((query_images[q], caption(query_labels, q, "")),
                    [(bank_images[i], caption(bank_labels, i, f"{s:.2f}")) for i, s in zip(row, sims)])
                   for q, row, sims in zip(picks, found.indices, found.similarities)], out / "neighbours.png")
    sections.append(page.section("Nearest neighbours", page.image("neighbours.png", "nearest neighbours"),
                                 f"Each row: a query from the {what} and its {k} nearest training images by cosine "
                                 "similarity of h (similarity and class under each)."))
    return _write(out, config, sections)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    from torchclr.runlog import RunLog

    return RunLog(run_dir, writer_enabled=False).latest_checkpoint()


def _summary(run_dir: Path, config: PretrainConfig, records: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    last = records[-1]
    rows: list[tuple[str, Any]] = [("folder", run_dir), ("data", config.data), ("encoder", f"{config.arch} at {config.image_size} px"),
                                   ("loss", f"{config.loss}, temperature {config.temperature}"),
                                   ("batch size / epochs", f"{config.batch_size} / {config.epochs}"),
                                   *([("views (--views)", config.views)] if config.views else []),
                                   ("reached", f"epoch {last.get('epoch')}, step {last.get('step')}")]
    knn = [r for r in records if "knn_top1" in r]
    if knn:
        rows.append((f"kNN monitor top-1 % (epoch {knn[-1]['epoch']})", f"{knn[-1]['knn_top1']:.2f}"))
    linear = run_dir / "linear_eval.json"
    if linear.is_file():
        rows += _final_evaluation(linear)
    return rows


def _final_evaluation(path: Path) -> list[tuple[str, Any]]:
    """Rows of the run's final evaluation table; a file that is not one is left out of the page with a note."""
    try:
        results = json.loads(path.read_text(errors="replace"))
        rows = []
        for name, result in results.items():
            protocol = result.get("protocol", "logreg")  # older runs wrote none: theirs was L-BFGS
            rows.append((f"{protocol} evaluation: {name}", f"top-1 {float(result['top1']):.2f} %, top-5 {float(result['top5']):.2f} %"))
        return rows
    except (OSError, ValueError, RecursionError, AttributeError, KeyError, TypeError) as err:
        _note(f"left {path} out of the report: it is not an evaluation table ({type(err).__name__})")
        return []


def _health_rows(records: list[dict[str, Any]], names: list[str]) -> list[tuple[str, str]]:
    """Per health metric: its first and last values and its best epoch (by --keep-best's direction where it has one)."""
    from torchclr.health import KEEP_BEST_HIGHER

    rows = []
    for name in names:
        values = [(r["epoch"], r[name]) for r in records if name in r and "epoch" in r]
        (first_epoch, first), (last_epoch, last) = values[0], values[-1]
        text = f"epoch {first_epoch}: {first:.4g}; epoch {last_epoch}: {last:.4g}"
        if name in KEEP_BEST_HIGHER:
            pick = max if KEEP_BEST_HIGHER[name] else min
            best_epoch, best = pick(values, key=lambda pair: pair[1])
            text += f"; best {best:.4g} at epoch {best_epoch}"
        rows.append((name, text))
    return rows


def _write(out: Path, config: PretrainConfig, sections: list[str]) -> Path:
    path = out / "index.html"
    write_text(path, page.page(f"torchclr report: {Path(config.out_dir).name}", sections), what="the report")
    return path
