"""The bad-input catalogue as a matrix: each kind of bad checkpoint and bad output path the tests make, run against
every command that reads (or writes) that kind of thing, in process. Each cell must end in one line with exit
code 2 naming the file or option. Run with `-s` to see the matrix (kinds x commands, handled / tried)."""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from test_bad_inputs import CHECKPOINT_CASES, DATA_CASES, FOLDER_SKIPS, ROOT, ZIP_SKIPS, _good_folder, _png
from torchclr.ablate import BUDGETS
from torchclr.ablate.runner import Budget
from torchclr.cli import main

def _report_of_a_run_holding(checkpoint: Path, tmp: Path, made: dict[str, Path]) -> list[str]:
    """`report` on a run folder whose encoder.safetensors is `checkpoint` (config and metrics intact)."""
    import yaml

    from torchclr.config import PretrainConfig
    from torchclr.pretrained import config_as_json

    checkpoint.rename(tmp / "encoder.safetensors")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config_as_json(PretrainConfig(data="sample", image_size=8))))
    (tmp / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "loss": 5.0, "lr": 0.1}\n')
    return ["report", str(tmp), "--device", "cpu"]


# (checkpoint, folder, the made fixture) -> argv; the checkpoint's name in the message is the one the argv gives
CHECKPOINT_COMMANDS: dict[str, Callable[[Path, Path, dict[str, Path]], list[str]]] = {
    "evaluate": lambda ckpt, tmp, made: ["evaluate", "--checkpoint", str(ckpt)],
    "embed": lambda ckpt, tmp, made: ["embed", "--checkpoint", str(ckpt), "--data", "sample", "--out", str(tmp / "e.npy")],
    "export": lambda ckpt, tmp, made: ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp / "e.onnx")],
    "neighbors --query": lambda ckpt, tmp, made: ["neighbors", "--embeddings", str(made["bank"]), "--query",
                                                  str(made["query"]), "--checkpoint", str(ckpt)],
    "report": _report_of_a_run_holding,
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


def test_checkpoint_kinds_against_every_command_that_reads_one(made: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    table = {}
    for kind, (make, needle) in CHECKPOINT_CASES.items():
        for command, argv in CHECKPOINT_COMMANDS.items():
            folder = tmp_path / f"{len(table)}"
            folder.mkdir()
            checkpoint = folder / "model.safetensors"
            checkpoint.write_bytes(make())
            args = argv(checkpoint, folder, made)
            before = sorted(p.name for p in folder.iterdir())
            named = checkpoint if checkpoint.exists() else folder / "encoder.safetensors"
            table[kind, command] = _cell(args, [needle, str(named)], capsys)
            assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
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


# ---- the data kinds (bad files among good ones, data with nothing usable) x every command that reads data ----

def _encoder(folder: Path) -> Path:
    """An untrained encoder file (8 px views): what embed, evaluate and neighbors read, made without a pretraining."""
    from torchclr.config import PretrainConfig
    from torchclr.models import build_simclr
    from torchclr.pretrained import save_encoder

    config = PretrainConfig(image_size=8, head="mlp", proj_dim=8, cifar_stem=False)
    model = build_simclr(config.arch, 8, False, config.head, config.head_layers, config.proj_dim)
    save_encoder(folder / "encoder.safetensors", model, config)
    return folder / "encoder.safetensors"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An encoder, and a bank of embeddings made with it (for neighbors --query)."""
    root = tmp_path_factory.mktemp("matrix")
    encoder = _encoder(root)
    assert main(["embed", "--checkpoint", str(encoder), "--data", str(_good_folder(root / "bank", 4)), "--out",
                 str(root / "bank.npy"), "--no-progress", "--workers", "0"]) == 0
    return {"encoder": encoder, "bank": root / "bank.npy", "query": root / "bank" / "good000.png"}


GOOD_PER_CLASS = 3
SKIP_KINDS = {**{f"folder: {k}": v for k, v in FOLDER_SKIPS.items()}, **{f"zip: {k}": v for k, v in ZIP_SKIPS.items()}}
LIMIT_KINDS = {"folder: file over --max-file-mb", "zip: member over --max-file-mb"}  # bad only under pretrain's --max-file-mb 1
FATAL_KINDS = {k: v for k, v in DATA_CASES.items() if k != "too few usable images for a step"}  # that one is pretrain's alone


def _labelled_with(kind: str, root: Path) -> tuple[Path, list[str]]:
    """train/{a,b} and test/{a,b} of good PNGs, the bad thing of `kind` among train/a (a folder) or a zip of good
    members with the bad one; returns the data path and the names of the bad entries."""
    if kind.startswith("zip: "):
        root.mkdir()
        archive = ZIP_SKIPS[kind[5:]][0](root, "train/a/")
        with zipfile.ZipFile(archive) as handle:
            bad = [info.filename.split("/")[-1] for info in handle.infolist()]
        with zipfile.ZipFile(archive, "a") as handle:
            for split, count in (("train", GOOD_PER_CLASS), ("test", 2)):
                for label in "ab":
                    for i in range(count):
                        handle.writestr(f"{split}/{label}/good{i}.png", _png(seed=i))
        return archive, bad
    for split, count in (("train", GOOD_PER_CLASS), ("test", 2)):
        for label in "ab":
            _good_folder(root / split / label, count)
    before = set(os.listdir(root / "train" / "a"))
    FOLDER_SKIPS[kind[8:]][0](root / "train" / "a")
    return root, sorted(set(os.listdir(root / "train" / "a")) - before)


EVALUATE_PROTOCOLS = {  # --protocol: the options that keep it to a few seconds on a dozen 8 px images
    "knn": ["--knn-k", "2"],
    "linear": ["--linear-epochs", "1", "--linear-batch-size", "2"],
    "logreg": [],
    "finetune": ["--finetune-epochs", "1", "--label-fraction", "1"],
}
DATA_COMMANDS = ["embed", *(f"evaluate {protocol}" for protocol in EVALUATE_PROTOCOLS), "report", "ablate"]
SLOW_COMMANDS = {"evaluate linear", "evaluate finetune", "report", "ablate"}  # a training step or a page of plots a cell


def _cells(kinds: Iterable[str], commands: list[str]) -> list[Any]:
    """(kind, command) parameters, the expensive commands' marked slow."""
    return [pytest.param(kind, command, marks=pytest.mark.slow) if command in SLOW_COMMANDS else (kind, command)
            for kind in kinds for command in commands]


def _skip_cells() -> list[Any]:
    kinds = [kind for kind in SKIP_KINDS if kind not in LIMIT_KINDS and not (ROOT and "unreadable" in kind)]  # root reads any file
    return _cells(kinds, DATA_COMMANDS) + [(kind, "neighbors --query") for kind in kinds if not kind.startswith("zip: ")]  # --query takes a file


def _only_error_line(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.strip().splitlines() if "note:" not in line and "warning:" not in line]


TINY_BUDGET = Budget("quick", train_images=100, test_images=100, epochs=1, batch_size=2, seeds=(0,), image_size=8,
                     head_dims=(8,), batch_sizes=(2,), epoch_grid=(1,))  # every image of the matrix's data drawn


def _data_argv(command: str, data: Path, made: dict[str, Path], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The argv of `command` reading `data`: its results under tmp/out (a run folder of tmp/run for report)."""
    out = tmp / "out"
    if command == "embed":
        return ["embed", "--checkpoint", str(made["encoder"]), "--data", str(data), "--out", str(out / "e.npy"),
                "--no-progress", "--workers", "0"]
    if command == "report":
        import yaml

        from torchclr.config import PretrainConfig
        from torchclr.pretrained import config_as_json

        run = tmp / "run"
        run.mkdir()
        (run / "encoder.safetensors").write_bytes(made["encoder"].read_bytes())
        config = PretrainConfig(data=str(data), image_size=8, batch_size=2, knn_k=2, workers=0)
        (run / "config.yaml").write_text(yaml.safe_dump(config_as_json(config)))
        (run / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "loss": 5.0, "lr": 0.1}\n')
        return ["report", str(run), "--device", "cpu"]
    if command == "ablate":
        monkeypatch.setitem(BUDGETS, "quick", TINY_BUDGET)
        return ["ablate", "head", "--budget", "quick", "--data", str(data), "--out", str(out), "--device", "cpu",
                "--report-only"]
    protocol = command.split()[1]
    return ["evaluate", "--checkpoint", str(made["encoder"]), "--protocol", protocol, "--data", str(data),
            *EVALUATE_PROTOCOLS[protocol], "--no-compare-random", "--device", "cpu", "--json", str(out / "r.json")]


@pytest.mark.parametrize("kind, command", _skip_cells())
def test_bad_files_among_good_ones_x_commands(kind: str, command: str, made: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A counted skip where going on makes sense (embed, evaluate, report, ablate), one line naming the file where
    the file is the whole input (neighbors --query)."""
    data, bad = _labelled_with(kind, tmp_path / "data")
    if command == "neighbors --query":
        query = data / "train" / "a" / bad[0]
        code = main(["neighbors", "--embeddings", str(made["bank"]), "--query", str(query), "-k", "2"])
        err = _only_error_line(capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("torchclr: error: ") and str(query) in err[0], err
        return
    code = main(_data_argv(command, data, made, tmp_path, monkeypatch))
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    if command == "embed":
        meta = json.loads((tmp_path / "out" / "e.json").read_text())
        assert meta["count"] == 2 * GOOD_PER_CLASS and len(meta["skipped"]) == len(bad), meta["skipped"]
        assert all(any(name in where for name in bad) for where in meta["skipped"])
        assert f"{len(bad)} unreadable images skipped" in out
    elif command == "ablate":
        assert f"(train): skipped {len(bad)} of" in out and (tmp_path / "out" / "ablations.md").is_file(), out
        subset = next((tmp_path / "out").glob("subset-*"))
        assert sorted(p.parent.name for p in (subset / "train").rglob("*.png")) == ["a"] * GOOD_PER_CLASS + ["b"] * GOOD_PER_CLASS
    elif command == "report":
        assert f"skipped {len(bad)}" in err and (tmp_path / "run" / "report" / "index.html").is_file(), err
    else:
        assert 0 <= json.loads((tmp_path / "out" / "r.json").read_text())["SimCLR"]["top1"] <= 100, err
        assert f"skipped {len(bad)}" in err and f"evaluating on the other {2 * GOOD_PER_CLASS}" in err, err


DECODE_KINDS = [kind for kind, (_, found) in SKIP_KINDS.items()  # what only decoding finds: the streamed path's own
                if found in ("truncated or corrupt", "not an image", "too many pixels", "bad CRC")]


@pytest.mark.parametrize("kind, command", _cells(DECODE_KINDS, [f"evaluate {p}" for p in EVALUATE_PROTOCOLS]))
def test_bad_files_among_good_ones_x_evaluate_streamed(kind: str, command: str, made: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation on a set too large to hold, read in batches at each use: a file that fails to decode is skipped
    and counted as in memory, its label with it."""
    from torchclr.evaluate import monitor  # torchclr.evaluate itself is the function

    monkeypatch.setattr(monitor, "fits_in_memory", lambda nbytes: False)
    data, bad = _labelled_with(kind, tmp_path / "data")
    code = main(_data_argv(command, data, made, tmp_path, monkeypatch))
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert 0 <= json.loads((tmp_path / "out" / "r.json").read_text())["SimCLR"]["top1"] <= 100, err
    assert f"skipped {len(bad)}" in err and f"evaluating on the other {2 * GOOD_PER_CLASS}" in err, err


@pytest.mark.parametrize("kind, command", _cells(FATAL_KINDS, DATA_COMMANDS))
def test_data_with_nothing_usable_x_commands(kind: str, command: str, made: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line naming the data, exit 2, no result written (pretrain: test_bad_inputs.test_data_with_no_usable_step)."""
    data = FATAL_KINDS[kind][0](tmp_path)
    assert _cell(_data_argv(command, data, made, tmp_path, monkeypatch), [str(data)], capsys)
    written = [p for folder in (tmp_path / "out", tmp_path / "run" / "report") if folder.exists()
               for p in folder.rglob("*") if p.is_file()]
    assert written == [], written


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["memory", "stream"])
@pytest.mark.parametrize("kind", [k for k in SKIP_KINDS if not (ROOT and "unreadable" in k)])
def test_bad_files_among_good_ones_x_pretrain(kind: str, mode: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """pretrain in memory and streamed: the bad file skipped and counted, the run done. In memory every skip is in
    skipped_files.csv; streamed, a file found bad only when decoded is replaced in its batch and counted in the
    epoch's warning (a batch of every image, so that the epoch draws it)."""
    from torchclr.data.skips import ReadPolicy
    from torchclr.data.sources import open_images

    data, bad = _labelled_with(kind, tmp_path / "data")
    listed = len(open_images(str(data), "train", policy=ReadPolicy(max_file_bytes=1 << 20)))
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(data), "--out-dir", str(out), "--data-mode", mode, "--max-file-mb", "1",
                 "--epochs", "1", "--batch-size", "2" if mode == "memory" else str(listed), "--image-size", "8",
                 "--warmup-epochs", "0", "--knn-every", "0", "--no-final-report", "--no-progress", "--precision", "fp32",
                 "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    skipped_csv = out / "skipped_files.csv"
    if mode == "stream" and listed == 2 * GOOD_PER_CLASS + 1:  # nothing left out when listing: found when decoding
        assert not skipped_csv.exists() and "epoch 1 skipped 1 images that could not be decoded" in err, err
        return
    with open(skipped_csv) as handle:
        named = [row["file"] for row in csv.DictReader(handle)]
    assert 1 <= len(named) <= len(bad) and all(any(name in where for name in bad) for where in named), named  # a loop: 1 or 2
