"""torchclr embed and neighbors: vectors against the encoder applied image by image, resume, formats, search, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from carry_fixtures import trained_run  # noqa: F401 (a fixture)
from PIL import Image

from torchclr import embed_work
from torchclr.cli import main
from torchclr.embed import embed, load_embeddings
from torchclr.neighbors import label_agreement, nearest
from torchclr.pretrained import load_encoder



def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchclr", *argv], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def embedded(trained_run: Path, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("embedded")
    for split in ("train", "test"):
        assert main(["embed", "--checkpoint", str(trained_run / "encoder.safetensors"), "--data", str(tiny_folder),
                     "--split", split, "--out", str(out / f"{split}.npy"), "--batch-size", "5", "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_embed_writes_h_of_each_file_with_its_name_and_label(embedded: Path, trained_run: Path, tiny_folder: Path) -> None:  # noqa: F811
    test = load_embeddings(embedded / "test.npy")
    assert len(test.names) == 16 and test.vectors.shape == (16, 512) and test.classes == ["circle", "stripes"]
    encoder, transform, _ = load_encoder(trained_run / "encoder.safetensors")
    for row in (0, 7, 15):  # the reference: the encoder on one image file at a time
        with torch.no_grad():
            alone = encoder(transform(Image.open(tiny_folder / "test" / test.names[row]))[None])[0].numpy()
        np.testing.assert_allclose(test.vectors[row], alone, atol=1e-5)
        assert test.classes[test.labels[row]] == test.names[row].split("/")[0]
    sidecar = json.loads((embedded / "test.json").read_text())
    assert sidecar["what"] == "h" and sidecar["count"] == 16 and sidecar["skipped"] == []


def test_parquet_holds_the_same_as_npy(embedded: Path, trained_run: Path, tiny_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("pyarrow")
    embed(trained_run / "encoder.safetensors", str(tiny_folder), tmp_path / "test.parquet", split="test", progress=False, workers=0)
    npy, parquet = load_embeddings(embedded / "test.npy"), load_embeddings(tmp_path / "test.parquet")
    np.testing.assert_allclose(parquet.vectors, npy.vectors, atol=1e-6)
    assert parquet.names == npy.names and parquet.labels == npy.labels


def test_projection_writes_z(trained_run: Path, tiny_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    meta = embed(trained_run / "encoder.safetensors", str(tiny_folder), tmp_path / "z.npy", split="test", projection=True,
                 progress=False, workers=0)
    assert meta["what"] == "z" and load_embeddings(tmp_path / "z.npy").vectors.shape == (16, 128)


@pytest.mark.slow
def test_an_interrupted_embed_resumes_where_it_stopped(trained_run: Path, tiny_folder: Path, tmp_path: Path,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    whole = embed(trained_run / "encoder.safetensors", str(tiny_folder), tmp_path / "whole.npy", split="train", batch_size=8,
                  progress=False, workers=0)
    real_write = embed_work.write_json
    writes = []

    def stop_after_three_batches(path: Path, values: dict, *, what: str) -> None:
        real_write(path, values, what=what)
        writes.append(values.get("done"))
        if values.get("done") == 24:
            raise KeyboardInterrupt

    monkeypatch.setattr(embed_work, "write_json", stop_after_three_batches)
    with pytest.raises(KeyboardInterrupt):
        embed(trained_run / "encoder.safetensors", str(tiny_folder), tmp_path / "cut.npy", split="train", batch_size=8, progress=False, workers=0)
    assert not (tmp_path / "cut.npy").exists()
    writes.clear()
    embed(trained_run / "encoder.safetensors", str(tiny_folder), tmp_path / "cut.npy", split="train", batch_size=8, progress=False, workers=0)
    assert "resuming" in capsys.readouterr().out and writes[0] == 32  # the first batch written is the fourth one
    np.testing.assert_array_equal(np.load(tmp_path / "cut.npy"), np.load(tmp_path / "whole.npy"))
    assert whole["count"] == 64 and not list(tmp_path.glob("*.partial*"))


def test_nearest_is_the_exact_cosine_top_k_on_torch_and_faiss() -> None:
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    expected = np.argsort(-sims, axis=1)[:, :5]
    found = nearest(bank, queries, 5, chunk=7)
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_allclose(found.similarities, np.take_along_axis(sims, expected, 1), atol=1e-5)
    if pytest.importorskip("faiss"):
        np.testing.assert_array_equal(nearest(bank, queries, 5, backend="faiss").indices, expected)
    itself = nearest(bank, bank[:4], 3, exclude=np.arange(4))
    assert not (itself.indices == np.arange(4)[:, None]).any()
    np.testing.assert_array_equal(itself.indices, np.argsort(-(unit[:4] @ unit.T), axis=1)[:, 1:4])


def test_label_agreement_counts_neighbours_of_the_query_class() -> None:
    from torchclr.neighbors import Neighbours

    found = Neighbours(np.array([[0, 1], [2, 3]]), np.zeros((2, 2)))
    assert label_agreement(found, np.array([0, 1]), np.array([0, 1, 1, 1])) == 75.0


@pytest.mark.slow
def test_neighbors_cli_writes_csv_and_grid(embedded: Path, tiny_folder: Path, tmp_path: Path) -> None:
    result = _cli("neighbors", "--embeddings", str(embedded / "train.npy"), "--query-embeddings", str(embedded / "test.npy"),
                  "-k", "3", "--out", str(tmp_path / "nn.csv"), "--grid", str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr
    assert "neighbours of the query's class" in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "nn.csv")))
    assert len(rows) == 16 * 3 and {r["rank"] for r in rows} == {"1", "2", "3"}
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 3 * 96 and grid.size[1] >= 8 * 96  # 8 query rows of 1 + 3 tiles
    query = tiny_folder / "test" / "circle" / "0000.png"
    result = _cli("neighbors", "--embeddings", str(embedded / "train.npy"), "--query", str(query), "-k", "2")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 3


@pytest.mark.slow
def test_bad_input_is_one_line(embedded: Path, trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    unreadable = tmp_path / "broken.png"
    unreadable.write_text("not an image")
    other = tmp_path / "other.safetensors"
    subprocess.run([sys.executable, "benchmarks/random_encoder.py", "--config", "quickstart", "--out", str(other)],
                   check=True, capture_output=True, cwd=Path(__file__).parents[1], timeout=300)
    cases = [
        (["neighbors", "--embeddings", str(embedded / "train.npy"), "--query", str(unreadable)], str(unreadable)),
        (["neighbors", "--embeddings", str(embedded / "train.npy"), "--query", str(unreadable), "--checkpoint", str(other)], str(other)),
        (["neighbors", "--embeddings", str(tmp_path / "none.npy"), "--index", "0"], "none.npy"),
        (["neighbors", "--embeddings", str(embedded / "train.npy"), "--index", "0", "-k", "500"], "-k"),
        (["embed", "--checkpoint", str(trained_run / "encoder.safetensors"), "--data", "sample", "--out", str(tmp_path / "x.txt")], "--out"),
    ]
    for argv, needle in cases:
        result = _cli(*argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, (argv, result.stderr)


def test_unreadable_images_are_skipped_and_listed(trained_run: Path, tiny_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted((tiny_folder / "test" / "circle").glob("*.png"))[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "0002.png").write_bytes(b"truncated")
    meta = embed(trained_run / "encoder.safetensors", str(folder), tmp_path / "mixed.npy", progress=False, workers=0)
    written = load_embeddings(tmp_path / "mixed.npy")
    assert meta["skipped"] == ["0002.png"] and written.names == ["0000.png", "0001.png", "0003.png"]
    assert written.vectors.shape == (3, 512) and np.isfinite(written.vectors).all()


@pytest.mark.slow
@pytest.mark.parametrize("after_rows", [8, 40])
def test_sigterm_during_embed_then_the_same_command_gives_identical_vectors(after_rows: int, trained_run: Path,  # noqa: F811
                                                                              tiny_folder: Path, tmp_path: Path) -> None:
    """A real `torchclr embed` process SIGTERMed once its progress record shows `after_rows` rows, then run again."""
    import signal
    import time

    out = tmp_path / "cut.npy"
    argv = [sys.executable, "-m", "torchclr", "embed", "--checkpoint", str(trained_run / "encoder.safetensors"), "--data",
            str(tiny_folder), "--split", "train", "--out", str(out), "--batch-size", "4", "--workers", "0", "--no-progress"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "cut.npy.partial.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(progress.read_text())["done"] >= after_rows:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "cut.npy.lock").exists()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"resuming {out}" in again.stdout, again.stderr
    embed(trained_run / "encoder.safetensors", str(tiny_folder), tmp_path / "whole.npy", split="train", batch_size=4,
          progress=False, workers=0)  # the uninterrupted run
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "whole.npy"))
    assert not list(tmp_path.glob("*.partial*"))
