"""The bad-input catalogue as a matrix: each kind of bad checkpoint and bad output path the tests make, run against
every command that reads (or writes) that kind of thing, in process. Each cell must end in one line with exit
code 2 naming the file or option. Run with `-s` to see the matrix (kinds x commands, handled / tried)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from test_bad_inputs import CHECKPOINT_CASES
from torchclr.cli import main

CHECKPOINT_COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "evaluate": lambda ckpt, tmp: ["evaluate", "--checkpoint", str(ckpt)],
    "embed": lambda ckpt, tmp: ["embed", "--checkpoint", str(ckpt), "--data", "sample", "--out", str(tmp / "e.npy")],
    "export": lambda ckpt, tmp: ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp / "e.onnx")],
}


def _output_in_the_way(tmp: Path) -> tuple[Path, str]:
    (tmp / "taken").mkdir()
    return tmp / "taken", "is a folder"


def _output_under_a_file(tmp: Path) -> tuple[Path, str]:
    (tmp / "plain").write_text("x")
    return tmp / "plain" / "out", "is a file, not a folder"


OUTPUT_KINDS: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "a folder in the way": _output_in_the_way,
    "a path under a file": _output_under_a_file,
}
OUTPUT_COMMANDS: dict[str, tuple[str, Callable[[Path, Path], list[str]]]] = {
    "evaluate --json": (".json", lambda out, ckpt: ["evaluate", "--checkpoint", str(ckpt), "--json", str(out)]),
    "embed --out": (".npy", lambda out, ckpt: ["embed", "--checkpoint", str(ckpt), "--data", "sample", "--out", str(out)]),
    "export --out": (".onnx", lambda out, ckpt: ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]),
}


def _cell(argv: list[str], needles: list[str], capsys: pytest.CaptureFixture) -> bool:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "note:" not in line]
    return code == 2 and len(err) == 1 and err[0].startswith("torchclr: error: ") and all(n in err[0] for n in needles)


def _show(title: str, table: dict[tuple[str, str], bool], columns: list[str]) -> None:
    rows = sorted({kind for kind, _ in table})
    print(f"\n{title}: {sum(table.values())} / {len(table)} handled")
    print(" | ".join(["kind", *columns]))
    for kind in rows:
        print(" | ".join([kind, *("one line" if table[kind, c] else "NOT HANDLED" for c in columns)]))


def test_checkpoint_kinds_against_every_command_that_reads_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = {}
    for kind, (make, needle) in CHECKPOINT_CASES.items():
        for command, argv in CHECKPOINT_COMMANDS.items():
            folder = tmp_path / f"{len(table)}"
            folder.mkdir()
            checkpoint = folder / "model.safetensors"
            checkpoint.write_bytes(make())
            table[kind, command] = _cell(argv(checkpoint, folder), [needle, str(checkpoint)], capsys)
            assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]  # nothing written
    _show("bad checkpoints x commands", table, list(CHECKPOINT_COMMANDS))
    assert all(table.values()), [cell for cell, ok in table.items() if not ok]


def test_output_path_kinds_against_every_command_that_writes_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = {}
    checkpoint = tmp_path / "never-read.safetensors"  # the output is checked before the checkpoint is opened
    for kind, make in OUTPUT_KINDS.items():
        for command, (suffix, argv) in OUTPUT_COMMANDS.items():
            folder = tmp_path / f"{len(table)}"
            folder.mkdir()
            out, needle = make(folder)
            out = out.with_name(out.name + suffix)
            if kind == "a folder in the way":
                out.mkdir()
            option = command.split()[1]
            table[kind, command] = _cell(argv(out, checkpoint), [needle, option], capsys)
    _show("bad output paths x commands", table, list(OUTPUT_COMMANDS))
    assert all(table.values()), [cell for cell, ok in table.items() if not ok]
