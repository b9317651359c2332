"""Wrong answers with exit code 0, and the one writer: options checked before any work, NaN rows left out,
work files checked on resume, output paths checked before the work, atomic writes, runs never mixed."""

from __future__ import annotations

import ast
import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from test_bad_inputs import _good_folder, _one_line_error
from test_reader import PACKAGE, _dotted
from torchclr import embed_work, writer
from torchclr.ablate.runner import read_results
from torchclr.embed import Embeddings
from torchclr.errors import UserError
from torchclr.neighbors import check_same_checkpoint, nearest
from torchclr.report.build import read_run

MISSING = "/nonexistent/never-read.safetensors"  # the checks come first: the checkpoint is never opened

OPTION_CASES = {
    "evaluate --linear-lr nan": (["evaluate", "--checkpoint", MISSING, "--linear-lr", "nan"], "--linear-lr must be a finite number"),
    "evaluate --linear-weight-decay inf": (["evaluate", "--checkpoint", MISSING, "--linear-weight-decay", "inf"], "--linear-weight-decay must be a finite"),
    "evaluate --knn-temperature nan": (["evaluate", "--checkpoint", MISSING, "--knn-temperature", "nan"], "--knn-temperature must be a finite"),
    "evaluate --label-fraction 2": (["evaluate", "--checkpoint", MISSING, "--label-fraction", "2"], "--label-fraction must be > 0 and <= 1"),
    "evaluate --linear-epochs 0": (["evaluate", "--checkpoint", MISSING, "--linear-epochs", "0"], "--linear-epochs must be > 0"),
    "evaluate --seed -1": (["evaluate", "--checkpoint", MISSING, "--seed", "-1"], "--seed must be >= 0"),
    "evaluate --json into a missing place": (["evaluate", "--checkpoint", MISSING, "--json", "/proc/none/r.json"], "--json /proc/none/r.json"),
    "embed --batch-size 0": (["embed", "--checkpoint", MISSING, "--data", "sample", "--out", "e.npy", "--batch-size", "0"], "--batch-size must be > 0"),
    "embed --split tset": (["embed", "--checkpoint", MISSING, "--data", "sample", "--split", "tset", "--out", "e.npy"], "--split 'tset' is not a split of sample; it has test, train"),
    "neighbors -k 0": (["neighbors", "--embeddings", "e.npy", "--index", "0", "-k", "0"], "-k must be > 0"),
    "neighbors --index -1": (["neighbors", "--embeddings", "e.npy", "--index", "-1"], "--index must be >= 0"),
    "report --max-points 1": (["report", "missing-run", "--max-points", "1"], "--max-points must be >= 2"),
    "ablate --seeds 99999999999999999999999": (["ablate", "head", "--seeds", "99999999999999999999999"], "--seeds must be >= 0 and <= "),
}


@pytest.mark.parametrize("name", OPTION_CASES)
def test_options_are_refused_before_any_work(name: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv, needle = OPTION_CASES[name]
    assert needle in _one_line_error(argv, capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_nan_and_inf_rows_of_a_bank_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    clean = nearest(bank, bank[:3], k=4)
    bank[[5, 17]] = np.nan
    bank[30, 2] = np.inf
    found = nearest(bank, bank[:3], k=4)
    assert found.left_out == 3 and np.isfinite(found.similarities).all()
    assert not set(found.indices.ravel()) & {5, 17, 30}
    reference = np.delete(np.arange(50), [5, 17, 30])  # the same search over the finite rows alone
    alone = nearest(np.delete(bank, [5, 17, 30], axis=0), bank[:3], k=4)
    np.testing.assert_array_equal(found.indices, reference[alone.indices])
    assert clean.indices[0, 0] == found.indices[0, 0] == 0
    with pytest.raises(UserError, match="query vector holds NaN"):
        nearest(bank, bank[[5]], k=2)


def _bank_made_by(checkpoint: Path, tmp_path: Path) -> Embeddings:
    from torchclr.embed import checkpoint_identity

    return Embeddings(np.zeros((1, 2), np.float32), ["a"], [-1], [], checkpoint_identity(checkpoint), tmp_path / "b.npy")


def test_a_changed_checkpoint_is_refused_for_queries(tmp_path: Path) -> None:
    checkpoint = tmp_path / "c.safetensors"
    checkpoint.write_bytes(b"weights one")
    bank = _bank_made_by(checkpoint, tmp_path)
    check_same_checkpoint(checkpoint, bank)  # the same file: accepted
    stat = checkpoint.stat()
    checkpoint.write_bytes(b"weights two")  # same size; mtime put back: only the hash sees it
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UserError, match="is not the file that made --embeddings .*sha256 changed"):
        check_same_checkpoint(checkpoint, bank)


# ---- embed's work: checked on resume, locked ----

JOB = {"checkpoint_sha256": "x", "count": 10, "dim": 4, "data": "d"}


def _work_with_three_batches(out: Path) -> np.ndarray:
    work = embed_work.open_work(out, JOB)
    rows = np.arange(40, dtype=np.float32).reshape(10, 4) + 1
    for start in (0, 3, 6):
        work.append(rows[start : start + 3], np.ones(3, bool))
    return rows


def test_work_resumes_only_when_its_checksums_hold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e.npy"
    rows = _work_with_three_batches(out)
    again = embed_work.open_work(out, JOB)
    assert again.done == 9 and np.array_equal(again.vectors[:9], rows[:9])
    vectors_path, _, progress = embed_work.work_paths(out)
    data = bytearray(vectors_path.read_bytes())
    data[-8 * 4 - 40] ^= 0xFF  # one byte of a written row changed
    vectors_path.write_bytes(bytes(data))
    del again
    assert embed_work.open_work(out, JOB).done == 0
    assert "do not match their checksums" in capsys.readouterr().err


def test_a_cut_work_file_or_record_restarts_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e.npy"
    _work_with_three_batches(out)
    vectors_path, _, progress = embed_work.work_paths(out)
    vectors_path.write_bytes(vectors_path.read_bytes()[:100])  # cut: would have resumed into zero vectors
    assert embed_work.open_work(out, JOB).done == 0 and "missing or cut short" in capsys.readouterr().err
    _work_with_three_batches(out)
    progress.write_text(progress.read_text()[:30])
    assert embed_work.open_work(out, JOB).done == 0 and "not readable JSON" in capsys.readouterr().err
    assert embed_work.open_work(out, {**JOB, "checkpoint_sha256": "y"}).done == 0
    assert "another job" in capsys.readouterr().err


def test_a_second_embed_on_one_out_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "e.npy"
    lock = out.with_name("e.npy.lock")
    lock.write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(UserError, match=rf"being written by another torchclr embed \(pid {os.getppid()}"):
        with embed_work.locked(out):
            pass
    lock.write_text("999999999")  # a process that is gone: its lock is taken over
    with embed_work.locked(out):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()
    lock.write_text(f"{os.getpid()} 1")  # this process's pid, but another start time: a dead holder whose pid came back
    with embed_work.locked(out):
        pass
    with embed_work.locked(out), pytest.raises(UserError, match=f"pid {os.getpid()}"):  # this very process holds it
        with embed_work.locked(out):
            pass



def test_two_processes_finding_one_stale_lock_at_once_never_both_take_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both read the dead holder's lock before either takes it over (they meet at a barrier right after reading it):
    exactly one gets the lock, the other is refused in one line."""
    out = tmp_path / "e.npy"
    out.with_name("e.npy.lock").write_text("999999999")  # a process that is gone
    after_reading, tried = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)
    first_read, real_read = threading.local(), writer._read_holder

    def read_then_meet(lock: Path) -> str | None:
        found = real_read(lock)
        if not getattr(first_read, "done", False):
            first_read.done = True
            after_reading.wait()
        return found

    monkeypatch.setattr(writer, "_read_holder", read_then_meet)
    results: list[str] = []

    def attempt() -> None:
        try:
            with embed_work.locked(out):
                results.append("held")
                tried.wait()  # hold it until the other has tried
        except UserError as err:
            results.append(str(err))
            tried.wait()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    refused = [r for r in results if r != "held"]
    assert results.count("held") == 1 and len(refused) == 1, results
    assert "\n" not in refused[0] and f"being written by another torchclr embed (pid {os.getpid()}" in refused[0]
    assert not out.with_name("e.npy.lock").exists()


# ---- the writer ----

def test_output_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a folder"):
        writer.check_output(tmp_path, "--out")
    with pytest.raises(UserError, match="file is a file, not a folder"):
        writer.check_output(tmp_path / "file" / "out.csv", "--out")
    with pytest.raises(UserError, match="an input of this command"):
        writer.check_output(tmp_path / "." / "file", "--out", inputs=[tmp_path / "file"])
    made = writer.check_output(tmp_path / "new" / "deeper" / "out.csv", "--grid")
    assert made.parent.is_dir() and "created folder" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="no space left on the device to write the results"):
        writer.write_atomically(target, full, what="the results")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ---- records of other commands: cut or mistyped lines are notes, not tracebacks ----

def test_a_cut_last_line_of_ablation_results_is_dropped_and_the_file_repaired(tmp_path: Path) -> None:
    path = tmp_path / "head-quick.jsonl"
    path.write_text(json.dumps({"cell": "a", "seed": 0, "knn_top1_h": 50.0}) + "\n" + '{"cell": "b", "se')
    notes: list[str] = []
    assert [r["cell"] for r in read_results(path, notes.append)] == ["a"] and "left out 1 line" in notes[0]
    with path.open("a") as handle:  # what run_cells appends next
        handle.write(json.dumps({"cell": "b", "seed": 0}) + "\n")
    assert [r["cell"] for r in read_results(path)] == ["a", "b"]


def test_report_skips_lines_that_are_not_metric_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text("epochs: 2\n")
    lines = ['{"step": 1, "loss": 5.0}', "[1, 2]", '"text"', '{"step": "one", "loss": 4.0}', '{"step": 2, "loss": null}',
             '{"step": 3, "loss": 4.5}', '{"step": 4, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    _, records = read_run(tmp_path)
    assert [r["step"] for r in records] == [1, 3]
    assert "skipped 5 of 7 lines" in capsys.readouterr().err


def test_garbage_final_evaluation_is_left_out_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torchclr.config import PretrainConfig
    from torchclr.report import build

    for garbage in ("not json", "[1, 2]", '{"SimCLR": 3}', '{"SimCLR": {"top1": "x", "top5": 1}}'):
        (tmp_path / "linear_eval.json").write_text(garbage)
        rows = build._summary(tmp_path, PretrainConfig(), [{"step": 1, "epoch": 1}])
        assert not any("evaluation" in str(name) for name, _ in rows)
        assert "left" in capsys.readouterr().err


def test_finetuning_on_three_labels_is_one_line() -> None:
    from torchclr.evaluate.finetune import FinetuneSettings, finetune
    from torchclr.models import build_encoder

    images = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(UserError, match="fine-tuning needs at least 4 labelled training images"):
        finetune(build_encoder("resnet18", 16), images, torch.tensor([0, 1, 0]), images, torch.tensor([0, 1, 0]), 2,
                 FinetuneSettings(1.0, 1), torch.device("cpu"), None)


def test_a_fresh_pretrain_into_a_run_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, out = _good_folder(tmp_path / "d", 4), tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (out / "checkpoints" / "epoch-0002.safetensors").write_bytes(b"old")
    line = _one_line_error(["pretrain", "--data", str(data), "--out-dir", str(out), "--batch-size", "2", "--image-size", "8",
                            "--no-progress"], capsys)
    assert f"--out-dir {out} holds a run (metrics.jsonl, 1 checkpoint(s))" in line and "--overwrite" in line
    assert (out / "checkpoints" / "epoch-0002.safetensors").read_bytes() == b"old"


# ---- the one writer: no module writes a file itself ----

# The writer, and the places allowed to write without it (with why).
WRITES_ALLOWED = {
    "writer.py": "the writer",
    "export.py": "each format's own save (torch.save, safetensors, TorchScript) writes the writer's temporary file",
    "memory.py": "/proc/self/clear_refs is a kernel control, not a file",
}
WRITE_CALLS = {"json.dump", "np.save", "np.savez", "np.savez_compressed", "numpy.save", "torch.save", "save_file"}
WRITE_METHODS = {"write_text", "write_bytes", "savefig"}


def file_writes(source: str) -> list[str]:
    """Every call in `source` that would write a file without the writer: the calls above, `open` / `Path.open`
    / `os.fdopen` with a mode that writes, and a PIL image's `save` (any `.save(...)` in a module that imports PIL)."""
    found = []
    tree = ast.parse(source)
    pil = any(isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "PIL"
              or isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "PIL" for alias in node.names)
              for node in ast.walk(tree))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        mode = None
        if name in ("open", "os.fdopen") or method == "open":
            position = 0 if method == "open" else 1
            mode = node.args[position] if len(node.args) > position else \
                next((k.value for k in node.keywords if k.arg == "mode"), None)
        writes_mode = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+")
        if name in WRITE_CALLS or method in WRITE_METHODS or writes_mode or (pil and method == "save"):
            found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_only_the_writer_writes_files() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative not in WRITES_ALLOWED and (writes := file_writes(path.read_text())):
            offenders[relative] = writes
    assert offenders == {}, f"write files through torchclr.writer: {offenders}"
    assert all((PACKAGE / name).is_file() for name in WRITES_ALLOWED)


def test_the_source_walk_sees_each_way_of_writing_a_file() -> None:
    snippet = """
open(p, "w")
open(p, mode="ab")
path.open("a")
os.fdopen(fd, "wb")
path.write_text("x")
json.dump(values, handle)
np.save(handle, array)
figure.savefig(p)
torch.save(state, p)
"""
    assert len(file_writes(snippet)) == 9
    assert len(file_writes("from PIL import Image\nImage.fromarray(pixels).save(p)\n")) == 1
    assert file_writes("model.save(p)\n") == []  # not PIL's: another module's own save
    assert file_writes('open(p)\nopen(p, "rb")\npath.open()\npath.read_text()\njson.dumps(v)\n') == []
