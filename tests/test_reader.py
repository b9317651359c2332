"""The one reader: no module opens image, array or archive files itself, and every path through the reader turns
bombs, malformed files and folders into a counted skip or one line."""

from __future__ import annotations

import ast
import csv
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from carry_fixtures import trained_run  # noqa: F401 (a fixture)
from PIL import Image

import torchclr
from test_bad_inputs import _bomb_png, _good_folder, _one_line_error, _png
from torchclr.cli import main
from torchclr.data.cache import materialize
from torchclr.data.plan import sample_sizes
from torchclr.data.reader import read_image_file
from torchclr.data.sources import open_images
from torchclr.errors import UserError

PACKAGE = Path(torchclr.__file__).parent

# The reader itself, and the one place allowed to read an archive's structure without it (with why).
ALLOWED = {
    "data/reader.py": "the reader",
    "data/shards.py": "indexes tar shards from their headers (offsets and sizes; each .cls read bounded to 65 bytes); "
                      "image bytes are read by offset and decoded by the reader",
}
FORBIDDEN_CALLS = {"Image.open", "PIL.Image.open", "np.load", "numpy.load", "zipfile.ZipFile", "zipfile.is_zipfile",
                   "tarfile.open", "tarfile.TarFile", "torchvision.io.decode_jpeg", "torchvision.io.decode_image",
                   "torchvision.io.read_image", "torchvision.io.read_file"}
FORBIDDEN_MODULES = {"zipfile", "tarfile"}
FORBIDDEN_FROM = {"torchvision.io": {"decode_jpeg", "decode_image", "read_image", "read_file"}}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def file_reads(source: str) -> list[str]:
    """Every call or import in `source` that would open an image, array or archive without the reader."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _dotted(node.func) in FORBIDDEN_CALLS:
            found.append(f"line {node.lineno}: {_dotted(node.func)}(...)")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"line {node.lineno}: from {node.module} import ...")
            names = FORBIDDEN_FROM.get(node.module, set()) & {a.name for a in node.names}
            found += [f"line {node.lineno}: from {node.module} import {name}" for name in sorted(names)]
    return found


def test_only_the_reader_opens_image_array_and_archive_files() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative not in ALLOWED:
            reads = file_reads(path.read_text())
            if reads:
                offenders[relative] = reads
    assert offenders == {}, f"open files through torchclr.data.reader: {offenders}"
    assert all((PACKAGE / name).is_file() for name in ALLOWED)  # an allowed place that moved must be renamed here


def test_the_source_walk_sees_each_way_of_opening_a_file() -> None:
    snippet = """
import zipfile
from tarfile import open as tar_open
from torchvision.io import decode_jpeg, ImageReadMode
from PIL import Image
import numpy as np
Image.open(path)
np.load(path)
"""
    found = file_reads(snippet)
    assert len(found) == 5 and any("Image.open" in f for f in found) and any("np.load" in f for f in found)
    assert file_reads("from PIL import Image\nImage.new('RGB', (1, 1))\nnp.save(p, a)\n") == []


@pytest.mark.slow
def test_bomb_among_good_pngs_is_a_counted_skip_when_pretraining(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The reported bug: the header sampler that picks the data mode raised DecompressionBombError."""
    data = _good_folder(tmp_path / "d", 6)
    (data / "bomb.png").write_bytes(_bomb_png())
    code = main(["pretrain", "--data", str(data), "--out-dir", str(tmp_path / "r"), "--image-size", "16", "--batch-size", "2",
                 "--epochs", "1", "--no-progress", "--knn-every", "0", "--warmup-epochs", "0", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 0 and "skipped 1 of 7 image files (1 too many pixels)" in err and "Traceback" not in err
    rows = list(csv.DictReader((tmp_path / "r" / "skipped_files.csv").open()))
    assert [(Path(r["file"]).name, r["kind"]) for r in rows] == [("bomb.png", "too many pixels")]


def test_header_sampling_leaves_a_bomb_out(tmp_path: Path) -> None:
    data = _good_folder(tmp_path / "d", 3)
    (data / "bomb.png").write_bytes(_bomb_png(30000, 30000))
    assert sorted(sample_sizes(open_images(str(data), "train"))) == [(12, 12)] * 3


def _malformed_tiff() -> bytes:
    """A TIFF whose StripOffsets tag is declared as ASCII text: PIL raises TypeError (not OSError) reading it."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for entry in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        start = ifd + 2 + 12 * entry
        if struct.unpack("<H", data[start : start + 2])[0] == 273:  # StripOffsets
            data[start + 2 : start + 4] = struct.pack("<H", 2)
    return bytes(data)


def test_malformed_tiff_is_caught_by_the_reader(tmp_path: Path) -> None:
    with pytest.raises(TypeError):  # what PIL itself does with it: the reason the reader catches more than OSError
        with Image.open(io.BytesIO(_malformed_tiff())) as img:
            img.load()
    data = _good_folder(tmp_path / "d", 3)
    (data / "bad.tif").write_bytes(_malformed_tiff())
    images = materialize(open_images(str(data), "train"), 12)
    assert len(images) == 3 and [(b.kind, b.detail.split(":")[0]) for b in images.skipped.entries] == [("truncated or corrupt", "TypeError")]
    with pytest.raises(UserError, match=r"--query .*bad.tif: truncated or corrupt: TypeError"):
        read_image_file(data / "bad.tif", "--query")


def test_a_folder_as_an_image_file_is_named_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a folder; give one image file"):
        read_image_file(tmp_path, "--query")
    with pytest.raises(UserError, match="does not exist"):
        read_image_file(tmp_path / "missing.png", "--query")


def _shard(path: Path, label: bytes) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in (("a.png", _png()), ("a.cls", label)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("label", [b"9" * 40, b"99999999", "\u00b2".encode()])
def test_huge_or_foreign_class_index_in_a_shard_is_one_line(label: bytes, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shard = _shard(tmp_path / "s.tar", label)
    line = _one_line_error(["pretrain", "--data", str(shard), "--out-dir", str(tmp_path / "r"), "--batch-size", "2",
                            "--no-progress"], capsys)
    assert "s.tar/a.cls" in line and "class index" in line


@pytest.mark.slow
def test_embed_counts_files_dropped_when_listing(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    import os

    data = _good_folder(tmp_path / "d", 3)
    (data / "zero.png").write_bytes(b"")
    os.mkfifo(data / "pipe.png")
    (data / "loop.png").symlink_to(data / "loop.png")
    (data / "cut.png").write_bytes(_png()[:50])
    assert main(["embed", "--checkpoint", str(trained_run / "encoder.safetensors"), "--data", str(data), "--out",
                 str(tmp_path / "e.npy"), "--workers", "0", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "e.json").read_text())
    assert meta["count"] == 3 and sorted(Path(p).name for p in meta["skipped"]) == ["cut.png", "loop.png", "pipe.png", "zero.png"]
    assert np.load(tmp_path / "e.npy").shape[0] == 3
