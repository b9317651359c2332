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


@pytest.mark.parametrize("before", IMPORT_ORDERS)
def test_public_names_are_the_functions_in_any_import_order(before: str) -> None:
    script = (f"{IMPORT_ORDERS[before]}\nimport inspect, torchclr\nfrom torchclr import embed, export, nearest\n"
              "for f in (embed, export, nearest, torchclr.embed, torchclr.export, torchclr.nearest):\n"
              "    assert inspect.isfunction(f), f\n"
              "assert torchclr.embed is embed and torchclr.export is export\n"
              "import importlib; assert importlib.import_module('torchclr.embed').load_embeddings\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


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
