"""The Python API as the README writes it: `from torchclr import embed, export, nearest` gives the functions,
whatever was imported before (a submodule of the same name used to take the function's place)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from carry_fixtures import trained_run  # noqa: F401 (a fixture)

IMPORT_ORDERS = {
    "package first": "import torchclr",
    "submodules first": "import torchclr.embed, torchclr.export, torchclr.neighbors",
    "command line first": "from torchclr.cli import main; from torchclr.embed import load_embeddings; from torchclr.export import export",
}


@pytest.mark.slow
@pytest.mark.parametrize("before", IMPORT_ORDERS)
def test_public_names_are_the_functions_in_any_import_order(before: str) -> None:
    script = (f"{IMPORT_ORDERS[before]}\nimport inspect, torchclr\nfrom torchclr import embed, export, nearest\n"
              "for f in (embed, export, nearest, torchclr.embed, torchclr.export, torchclr.nearest):\n"
              "    assert inspect.isfunction(f), f\n"
              "assert torchclr.embed is embed and torchclr.export is export\n"
              "import importlib; assert importlib.import_module('torchclr.embed').load_embeddings\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_readme_calls(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    import torchclr.embed  # noqa: F401 (the import that used to shadow the function)
    from torchclr import embed, export, nearest
    from torchclr.embed import load_embeddings

    from torchclr.pretrained import load_encoder

    checkpoint = trained_run / "encoder.safetensors"
    data = load_encoder(checkpoint).info["config"].data
    meta = embed(checkpoint, data, tmp_path / "photos.npy", split="test", progress=False, workers=0)
    bank = load_embeddings(tmp_path / "photos.npy")
    found = nearest(bank.vectors, bank.vectors[:1], k=5)
    assert meta["count"] == len(bank.vectors) == 16 and found.indices[0, 0] == 0
    assert np.isclose(found.similarities[0, 0], 1.0, atol=1e-5)
    done = export(checkpoint, "onnx", tmp_path / "encoder.onnx")
    assert done.path.is_file() and done.path.suffix == ".onnx"


def test_evaluate_from_python_is_the_kNN_of_the_encoder(trained_run: Path) -> None:  # noqa: F811
    """`torchclr.evaluate(...)` scores the encoder as an independent kNN on its own features does."""
    import torch

    import torchclr
    from torchclr.evaluate.features import extract_features
    from torchclr.evaluate.knn import accuracy, knn_predict
    from torchclr.evaluate.monitor import LabelledEval
    from torchclr.pretrained import load_encoder

    checkpoint = trained_run / "encoder.safetensors"
    done = torchclr.evaluate(checkpoint, protocol="knn", knn_k=5, device="cpu", compare_random=False)
    assert list(done.results) == ["SimCLR"] and "weighted kNN" in done.table
    encoder, _, info = load_encoder(checkpoint)
    labelled = LabelledEval.open(info["config"].data, info["config"].image_size)
    train, test = (extract_features(encoder, split.views()[0], torch.device("cpu")) for split in (labelled.train, labelled.test))
    expected = accuracy(knn_predict(train, labelled.train.labels, test, labelled.num_classes, 5, 0.1), labelled.test.labels)
    assert done.results["SimCLR"]["top1"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(torchclr.UserError, match="--knn-temperature must be a finite number"):
        torchclr.evaluate(checkpoint, protocol="knn", knn_temperature=float("nan"))
