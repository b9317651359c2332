"""`torchclr embed`: the representation of every image of a data set, streamed, written with its file name.

Images are decoded in DataLoader workers batch by batch (never all in memory) at the encoder's evaluation centre
view, and the vectors go straight into a memory-mapped work file beside the output. The work file and a small
JSON record how far it got, so an interrupted run over a large set continues where it stopped. At the end the
vectors are written as `.npy` + `.csv` (names, labels) or as one Parquet file (the `parquet` extra), with a
`.json` sidecar naming the checkpoint, so that `torchclr neighbors` can embed new queries the same way.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from torchclr.data.reader import load_array
from torchclr.data.skips import ReadPolicy
from torchclr.data.sources import ImageSet, check_split, open_images
from torchclr.embed_work import locked, open_work, remove_work
from torchclr.errors import UserError
from torchclr.evaluate.features import DecodedCentreViews, batch_features
from torchclr.options import check_number
from torchclr.pretrained import load_encoder, load_head
from torchclr.writer import check_output, csv_writer, npy_writer, signals_raise, write_atomically, write_json

FORMATS = (".npy", ".parquet")


@dataclass
class Embeddings:
    """Vectors [N, d] with the name, label and class name of each image, and the sidecar's description."""

    vectors: np.ndarray
    names: list[str]
    labels: list[int]
    classes: list[str]
    meta: dict[str, Any]
    path: Path

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """(the vectors file, its JSON sidecar); the format is the suffix of --out."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise UserError(f"--out {out}: give a .npy file (vectors, with a .csv of names beside it) or a .parquet file")
    return out, out.with_suffix(".json")


def _parquet() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UserError("Parquet output needs pyarrow: pip install 'torchclr[parquet]' (or write a .npy)") from None
    return pyarrow


def checkpoint_identity(path: Path) -> dict[str, Any]:
    """Which file made the vectors: its path, size, mtime and SHA-256 (the hash is what `neighbors` compares)."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"checkpoint": str(path.resolve()), "checkpoint_size": stat.st_size, "checkpoint_mtime_ns": stat.st_mtime_ns,
            "checkpoint_sha256": digest.hexdigest()}


@torch.no_grad()
def embed(checkpoint: str | Path, data: str, out: str | Path, *, split: str = "train", projection: bool = False,
          batch_size: int = 256, workers: int | None = None, device: str = "auto", precision: str = "fp32",
          download: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write h (or z = g(h) with `projection`) of every image of `data` to `out`; returns the sidecar's content."""
    from torchclr.runtime import autocast_dtype, default_workers, resolve_device

    out_path, sidecar = output_paths(out)
    if out_path.suffix == ".parquet":
        _parquet()
    check_number("--batch-size", batch_size, low=0, low_open=True)
    for target_file in (out_path, sidecar, *([out_path.with_suffix(".csv")] if out_path.suffix == ".npy" else [])):
        check_output(target_file, "--out", inputs=[checkpoint])
    check_split(data, split)
    target = resolve_device(device)
    dtype = autocast_dtype(precision, target)
    encoder, _, info = load_encoder(checkpoint)
    network = torch.nn.Sequential(encoder, load_head(checkpoint, encoder)) if projection else encoder
    network = network.to(target)
    dim = info["model"]["proj_dim"] if projection and info["model"]["head"] != "none" else encoder.feature_dim
    trained = info["config"]
    images = open_images(data, split, download, ReadPolicy(channels=trained.in_channels, value_range=trained.value_range))
    size = info["config"].image_size
    meta = {**checkpoint_identity(Path(checkpoint)), "model": info["model"], "what": "z" if projection else "h",
            "dim": dim, "count": len(images), "data": data, "split": split, "origin": images.origin,
            "fingerprint": images.fingerprint or f"{images.origin}:{len(images)}", "image_size": size, "precision": precision,
            **({"value_range": list(trained.value_range)} if trained.value_range else {})}

    with locked(out_path), signals_raise(f"--out {out_path} (continue with the same command)"):
        work = open_work(out_path, meta)
        loader = DataLoader(DecodedCentreViews(images, size), batch_size=batch_size, sampler=range(work.done, len(images)),
                            num_workers=default_workers() if workers is None else workers, pin_memory=target.type == "cuda")
        bar = tqdm(total=len(images), initial=work.done, desc="embed", unit="img", disable=not progress, dynamic_ncols=True)
        for views, ok in loader:
            work.append(batch_features(network, views, target, dtype).numpy(), ok.numpy())
            bar.update(len(views))
        bar.close()
        mask = np.asarray(work.ok)
        undecodable = [_name(images, i) for i in np.flatnonzero(~mask)]
        meta["count"] = len(images) - len(undecodable)
        meta["skipped"] = [*(bad.where for bad in images.skipped.entries), *undecodable]  # listing time, then decoding
        if not mask.any():  # zero vectors with exit code 0 would look like a result
            del work
            remove_work(out_path)
            raise UserError(f"data {images.origin}: every image file is bad: none of its {len(meta['skipped'])} image "
                            f"files could be read and decoded (first: {meta['skipped'][0]}); nothing was written")
        _finish(out_path, sidecar, np.asarray(work.vectors)[mask], images, np.flatnonzero(mask), meta)
        del work
        remove_work(out_path)
    return meta


def _name(images: ImageSet, index: int) -> str:
    return images.names[index] if images.names else str(index)


def _finish(out: Path, sidecar: Path, vectors: np.ndarray, images: ImageSet, kept: np.ndarray, meta: dict[str, Any]) -> None:
    names = [_name(images, int(i)) for i in kept]
    labels = [int(images.labels[i]) for i in kept]
    classes = [images.classes[label] if label >= 0 else "" for label in labels]
    if out.suffix == ".parquet":
        pa = _parquet()
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1])
        table = pa.table({"name": names, "label": labels, "class": classes, "embedding": column})
        write_atomically(out, lambda tmp: pa.parquet.write_table(table, tmp), what="the embeddings")
    else:
        write_atomically(out, npy_writer(vectors), what="the embeddings")
        write_atomically(out.with_suffix(".csv"), csv_writer(["index", "name", "label", "class"],
                                                             zip(range(len(names)), names, labels, classes)),
                         what="the embeddings' names")
    write_json(sidecar, {**meta, "classes": list(images.classes), "format": out.suffix[1:]}, what="the embeddings' description")


def load_embeddings(path: str | Path) -> Embeddings:
    """Read what `embed` wrote (.npy + .csv + .json, or .parquet + .json); anything else is a UserError naming the file."""
    out, sidecar = output_paths(path)
    for needed in (out, sidecar):
        if not needed.is_file():
            raise UserError(f"embeddings {out}: {needed} does not exist (write it with torchclr embed)")
    try:
        meta = json.loads(sidecar.read_text())
        if out.suffix == ".parquet":
            table = _parquet().parquet.read_table(out)
            flat = table.column("embedding").combine_chunks().flatten().to_numpy()
            vectors = flat.reshape(len(table), -1).astype(np.float32, copy=False)
            names, labels = table.column("name").to_pylist(), table.column("label").to_pylist()
        else:
            vectors = load_array(out, mmap_mode="r")
            with open(out.with_suffix(".csv"), newline="") as handle:
                rows = list(csv.DictReader(handle))
            names, labels = [row["name"] for row in rows], [int(row["label"]) for row in rows]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"embeddings {out} cannot be read: {err}") from None
    if vectors.ndim != 2 or len(vectors) != len(names) or vectors.shape[1] != meta.get("dim"):
        raise UserError(f"embeddings {out}: {vectors.shape} vectors do not match their {len(names)} names / sidecar {sidecar}")
    return Embeddings(np.asarray(vectors), names, labels, meta.get("classes", []), meta, out)
