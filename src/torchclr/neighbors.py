"""`torchclr neighbors`: the nearest images by cosine similarity, exact, on the device in chunks or with faiss.

Queries are an image file (embedded with the checkpoint that made the embeddings), a row of the embeddings
themselves, or every row of another embeddings file (e.g. the test split against the train split, where the
share of neighbours with the query's class measures the representation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from torchclr.data.bands import preview_rgb
from torchclr.data.reader import read_image_file
from torchclr.data.skips import ReadPolicy
from torchclr.data.sources import open_images
from torchclr.embed import Embeddings
from torchclr.errors import UserError
from torchclr.writer import check_output, csv_writer, png_writer, write_atomically

BACKENDS = ("torch", "faiss")
TILE = 96


@dataclass
class Neighbours:
    """For each query row, the indices into the bank of its k nearest vectors and their cosine similarities;
    `left_out`: bank rows holding NaN or infinity, never returned (their similarity is NaN, which sorts first)."""

    indices: np.ndarray
    similarities: np.ndarray
    left_out: int = 0


def nearest(bank: np.ndarray | torch.Tensor, queries: np.ndarray | torch.Tensor, k: int, *, backend: str = "torch",
            device: torch.device | str = "cpu", exclude: np.ndarray | None = None, chunk: int = 4096) -> Neighbours:
    """Exact k nearest by cosine similarity; `exclude[i]` is a bank row query i may not return (itself), or -1."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    bank_t = torch.tensor(np.asarray(bank), dtype=torch.float32)  # a copy: the bank may be a read-only memmap
    query_t = torch.tensor(np.asarray(queries), dtype=torch.float32)
    if not torch.isfinite(query_t).all():
        raise UserError("a query vector holds NaN or infinity: it has no nearest neighbours")
    finite = torch.isfinite(bank_t).all(1)
    rows = finite.nonzero().squeeze(1).numpy()  # bank row of each searched row
    extra = 0 if exclude is None else 1
    if k <= 0 or k + extra > len(rows):
        bad = f", {len(bank) - len(rows)} of them NaN or infinite" if len(rows) < len(bank) else ""
        raise UserError(f"-k must be between 1 and {len(rows) - extra} (the embeddings hold {len(bank)} vectors{bad}), got {k}")
    bank_t, query_t = F.normalize(bank_t[finite], dim=1), F.normalize(query_t, dim=1)
    if backend == "faiss":
        sims, idx = _faiss_search(bank_t.numpy(), query_t.numpy(), k + extra)
    else:
        sims, idx = _torch_search(bank_t.to(device), query_t, k + extra, torch.device(device), chunk)
    idx = rows[idx]
    if exclude is not None:
        sims, idx = _drop(sims, idx, exclude, k)
    return Neighbours(idx, sims, left_out=len(bank) - len(rows))


@torch.no_grad()
def _torch_search(bank: torch.Tensor, queries: torch.Tensor, k: int, device: torch.device, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    sims, idx = [], []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk].to(device) @ bank.T
        top = scores.topk(k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def _faiss_search(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError:
        raise UserError("--backend faiss needs faiss: pip install 'torchclr[faiss]'") from None
    index = faiss.IndexFlatIP(bank.shape[1])  # inner product of unit vectors = cosine similarity, exact
    index.add(np.ascontiguousarray(bank))
    sims, idx = index.search(np.ascontiguousarray(queries), k)
    return sims, idx


def _drop(sims: np.ndarray, idx: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row from its k+1 results (or the last one, when it was not among them)."""
    keep = idx != exclude[:, None]
    keep[keep.sum(1) > k, -1] = False
    return sims[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)


def label_agreement(neighbours: Neighbours, query_labels: np.ndarray, bank_labels: np.ndarray) -> float:
    """Share (%) of all k neighbours of all queries whose label is the query's."""
    return float(100.0 * (bank_labels[neighbours.indices] == query_labels[:, None]).mean())


def embed_query_image(path: str | Path, checkpoint: str | Path, embeddings: Embeddings) -> np.ndarray:
    """The vector [1, d] of one image file, made as `embed` made the bank; a checkpoint that cannot have made
    the bank (another model, another size, h instead of z) is refused before any work."""
    from torchclr.evaluate.features import batch_features
    from torchclr.pretrained import load_encoder, load_head

    made_by = embeddings.meta
    encoder, transform, info = load_encoder(checkpoint)
    check_same_checkpoint(checkpoint, embeddings)
    if info["model"] != made_by["model"] or info["config"].image_size != made_by["image_size"]:
        raise UserError(f"embeddings {embeddings.path} were made by a {_describe(made_by['model'], made_by['image_size'])} "
                        f"but checkpoint {checkpoint} is a {_describe(info['model'], info['config'].image_size)}")
    network = torch.nn.Sequential(encoder, load_head(checkpoint, encoder)) if made_by["what"] == "z" else encoder
    query = read_image_file(path, "--query", read_policy(embeddings))
    vector = batch_features(network, transform(query)[None], torch.device("cpu"), None)
    if vector.shape[1] != embeddings.vectors.shape[1]:
        raise UserError(f"embeddings {embeddings.path} hold {embeddings.vectors.shape[1]}-d vectors but checkpoint "
                        f"{checkpoint} gives {vector.shape[1]}-d {made_by['what']}")
    return vector.numpy()


def check_same_checkpoint(checkpoint: str | Path, embeddings: Embeddings) -> None:
    """Refuse a checkpoint file that is not the one that made `embeddings` (by its SHA-256, or by size and mtime
    for banks written before the hash was recorded): a re-run pretrain would otherwise change every answer."""
    from torchclr.embed import checkpoint_identity

    made_by, now = embeddings.meta, checkpoint_identity(Path(checkpoint))
    keys = ("checkpoint_sha256",) if "checkpoint_sha256" in made_by else ("checkpoint_size", "checkpoint_mtime_ns")
    if any(made_by.get(key) != now[key] for key in keys):
        raise UserError(f"checkpoint {checkpoint} is not the file that made --embeddings {embeddings.path} "
                        f"(its {' and '.join(k.removeprefix('checkpoint_') for k in keys)} changed since): embed again "
                        "with it, or pass --checkpoint with the file that made them")


def _describe(model: dict, image_size: int) -> str:
    stem = ", CIFAR stem" if model.get("cifar_stem") else ""
    return f"{model['arch']} ({image_size} px{stem}, head {model['head']} -> {model['proj_dim']})"


def write_csv(path: str | Path, neighbours: Neighbours, bank: Embeddings, query_names: list[str]) -> None:
    rows = ([query, rank, bank.names[index], bank.classes[bank.labels[index]] if bank.labels[index] >= 0 else "", f"{sim:.6f}"]
            for row, query in enumerate(query_names)
            for rank, (index, sim) in enumerate(zip(neighbours.indices[row], neighbours.similarities[row]), start=1))
    write_atomically(path, csv_writer(["query", "rank", "neighbour", "class", "similarity"], rows), what="the neighbours (--out)")


def _tile(image: torch.Tensor | None, caption: str, size: int = TILE) -> Image.Image:
    """An image scaled to `size` px (nearest neighbour: small images stay sharp) above a one-line caption."""
    tile = Image.new("RGB", (size, size + 14), "white")
    if image is not None:
        picture = Image.fromarray(preview_rgb(image).permute(1, 2, 0).contiguous().numpy())
        scale = size / max(picture.size)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), resample)
        tile.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    ImageDraw.Draw(tile).text((2, size + 1), caption[:16], fill="black")
    return tile


def contact_sheet(rows: list[tuple[tuple[torch.Tensor, str], list[tuple[torch.Tensor, str]]]], path: str | Path) -> None:
    """A PNG with one row per query: the query, a gap, then its neighbours, each captioned."""
    columns = 1 + max(len(found) for _, found in rows)
    sheet = Image.new("RGB", (columns * (TILE + 4) + 12, len(rows) * (TILE + 18)), "white")
    for r, (query, found) in enumerate(rows):
        y = r * (TILE + 18)
        sheet.paste(_tile(*query), (0, y))
        for c, item in enumerate(found, start=1):
            sheet.paste(_tile(*item), (c * (TILE + 4) + 12, y))
    write_atomically(path, png_writer(sheet), what="the contact sheet")


def grid_rows(neighbours: Neighbours, bank: Embeddings, queries: list[tuple[torch.Tensor, str]]
              ) -> list[tuple[tuple[torch.Tensor, str], list[tuple[torch.Tensor, str]]]]:
    """Query tiles with their neighbours' images (one row per query tile), captioned with similarity and class."""
    read = _image_reader(bank)
    rows = []
    for row, query in enumerate(queries):
        found = []
        for index, sim in zip(neighbours.indices[row], neighbours.similarities[row]):
            label = bank.labels[index]
            found.append((read(bank.names[index]), f"{sim:.3f} {bank.classes[label] if label >= 0 else ''}"))
        rows.append((query, found))
    return rows


def search(embeddings: str | Path, k: int, *, query: str | None = None, index: int | None = None,
           query_embeddings: str | Path | None = None, checkpoint: str | Path | None = None, backend: str = "torch",
           device: str = "auto", out: str | Path | None = None, grid: str | Path | None = None) -> str:
    """What `torchclr neighbors` does: one kind of query against `embeddings`; returns the text to show."""
    from torchclr.embed import load_embeddings
    from torchclr.runtime import resolve_device

    bank = load_embeddings(embeddings)
    inputs = [bank.path, bank.path.with_suffix(".csv"), bank.path.with_suffix(".json")]
    if query_embeddings is not None:
        inputs += [Path(query_embeddings), Path(query_embeddings).with_suffix(".csv")]
    for option, target in (("--out", out), ("--grid", grid)):
        if target:
            check_output(target, option, inputs=inputs + ([Path(query)] if query else []))
    exclude = None
    if query_embeddings is not None:
        queries = load_embeddings(query_embeddings)
        if queries.meta["model"] != bank.meta["model"] or queries.vectors.shape[1] != bank.vectors.shape[1]:
            raise UserError(f"--query-embeddings {query_embeddings} ({queries.vectors.shape[1]}-d, {queries.meta['model']['arch']}) "
                            f"do not match --embeddings {embeddings} ({bank.vectors.shape[1]}-d, {bank.meta['model']['arch']})")
        vectors, names = queries.vectors, queries.names
    elif index is not None:
        if not 0 <= index < len(bank.names):
            raise UserError(f"--index {index} is not a row of {embeddings} (0 to {len(bank.names) - 1})")
        vectors, names, exclude = bank.vectors[[index]], [bank.names[index]], np.asarray([index])
    elif query is not None:
        vectors, names = embed_query_image(query, checkpoint or bank.meta["checkpoint"], bank), [query]
    else:
        raise UserError("give one of --query, --index or --query-embeddings")
    found = nearest(bank.vectors, vectors, k, backend=backend, device=resolve_device(device), exclude=exclude)
    note = ([f"note: left out {found.left_out} of the {len(bank.names):,} vectors of {embeddings}: they hold NaN or infinity"]
            if found.left_out else [])
    if query_embeddings is not None:
        lines = [f"{len(names):,} queries of {query_embeddings} against {len(bank.names):,} vectors of {embeddings}, k = {k}"]
        if queries.labelled and bank.labelled and queries.classes == bank.classes:
            share = label_agreement(found, np.asarray(queries.labels), np.asarray(bank.labels))
            lines.append(f"neighbours of the query's class: {share:.2f}%")
    else:
        lines = [f"{'rank':>4}  {'similarity':>10}  {'class':<12} name"]
        for rank, (row, sim) in enumerate(zip(found.indices[0], found.similarities[0]), start=1):
            label = bank.labels[row]
            lines.append(f"{rank:>4}  {sim:>10.4f}  {bank.classes[label] if label >= 0 else '':<12} {bank.names[row]}")
    if out:
        write_csv(out, found, bank, names)
    if grid:
        if query is not None:
            tiles = [(read_image_file(query, "--query", read_policy(bank)), "query")]
        else:
            tiles = _tiles_of(queries if query_embeddings is not None else bank, names)
        contact_sheet(grid_rows(found, bank, tiles), grid)
    return "\n".join(note + lines)


def read_policy(embeddings: Embeddings) -> ReadPolicy:
    """How images are read for `embeddings`: with the channels (RGB before --in-channels) and --value-range of the
    run that made their model."""
    value_range = embeddings.meta.get("value_range")
    return ReadPolicy(channels=embeddings.meta["model"].get("in_channels", 3),
                      value_range=tuple(value_range) if value_range else None)


def _image_reader(embeddings: Embeddings) -> Callable[[str], torch.Tensor]:
    """The image behind a name of `embeddings`, read back from the data they were made from."""
    images = open_images(embeddings.meta["data"], embeddings.meta["split"], policy=read_policy(embeddings))
    position = {name: i for i, name in enumerate(images.names)}
    return lambda name: images.image(position[name] if images.names else int(name))


def _tiles_of(embeddings: Embeddings, names: list[str], limit: int = 8) -> list[tuple[torch.Tensor, str]]:
    read = _image_reader(embeddings)
    return [(read(name), "query") for name in names[:limit]]
