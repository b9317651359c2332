"""The resumable work of `torchclr embed`: memory-mapped vectors, a progress record with checksums, and a lock.

An embedding of a large set runs for hours; a cut run continues where it stopped. What it continues from must be
what it wrote: the progress record (`OUT.partial.json`) names the job (checkpoint file by SHA-256, data
fingerprint, model, size) and holds CRC-32s of the vectors and flags written so far, checked on resume. A work file
cut short, a record that is not JSON or a changed checkpoint is a one-line note and a fresh start, never a resume
into zero vectors. The work files' blocks are reserved when they are made, so a full disk is one line at the start
instead of a SIGBUS half-way. A lock file (`OUT.lock`, holding the pid) keeps a second run off the same --out.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from torchclr.data.reader import load_array
from torchclr.errors import UserError
from torchclr.writer import describe_error, locked as writer_locked, write_json

CRC_BLOCK = 1 << 16  # rows per block when checking a work file's checksum


def locked(out: Path) -> ContextManager[None]:
    """`OUT.lock` held while embedding into `out` (see `writer.locked`)."""
    return writer_locked(out.with_name(out.name + ".lock"), option="--out", path=out, command="embed")


@dataclass
class Work:
    """The work arrays of one embedding job, `done` rows of them written and checksummed."""

    vectors: np.ndarray
    ok: np.ndarray
    done: int
    crc_vectors: int
    crc_ok: int
    progress: Path
    job: dict[str, Any]

    def append(self, vectors: np.ndarray, ok: np.ndarray) -> None:
        """Write the next rows, flush them, then record how far the work got (in that order: the record never
        runs ahead of the data)."""
        rows = slice(self.done, self.done + len(vectors))
        self.vectors[rows], self.ok[rows] = vectors, ok
        self.vectors.flush()
        self.ok.flush()
        self.crc_vectors = zlib.crc32(np.ascontiguousarray(self.vectors[rows]).tobytes(), self.crc_vectors)
        self.crc_ok = zlib.crc32(np.ascontiguousarray(self.ok[rows]).tobytes(), self.crc_ok)
        self.done += len(vectors)
        write_json(self.progress, self._record(), what="embed's progress record")

    def _record(self) -> dict[str, Any]:
        return {**self.job, "done": self.done, "crc_vectors": self.crc_vectors, "crc_ok": self.crc_ok}


def work_paths(out: Path) -> tuple[Path, Path, Path]:
    """(vectors, flags, progress record) beside `out`."""
    return out.with_name(out.name + ".partial.npy"), out.with_name(out.name + ".partial-ok.npy"), out.with_name(out.name + ".partial.json")


def open_work(out: Path, job: dict[str, Any]) -> Work:
    """The work of `job` as far as a cut run took it, checked; or fresh work arrays (with a note why, if some existed)."""
    vectors_path, ok_path, progress = work_paths(out)
    if progress.exists():
        resumed = _resume(vectors_path, ok_path, progress, job)
        if isinstance(resumed, Work):
            print(f"torchclr: resuming {out} at image {resumed.done:,} of {job['count']:,}", flush=True)
            return resumed
        print(f"torchclr: note: not resuming {out} from {progress}: {resumed}; starting again", file=sys.stderr, flush=True)
    shape = (job["count"], job["dim"])
    try:
        vectors = np.lib.format.open_memmap(vectors_path, mode="w+", dtype=np.float32, shape=shape)
        ok = np.lib.format.open_memmap(ok_path, mode="w+", dtype=np.bool_, shape=(job["count"],))
        for path in (vectors_path, ok_path):  # reserve the blocks now: a full disk is an OSError here, not a SIGBUS later
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, path.stat().st_size)
            finally:
                os.close(fd)
    except OSError as err:
        for path in (vectors_path, ok_path):
            path.unlink(missing_ok=True)
        raise UserError(describe_error(err, vectors_path, "embed's work file")) from None
    work = Work(vectors, ok, 0, 0, 0, progress, job)
    write_json(progress, work._record(), what="embed's progress record")
    return work


def _resume(vectors_path: Path, ok_path: Path, progress: Path, job: dict[str, Any]) -> Work | str:
    """The checked work, or why it cannot be resumed."""
    try:
        saved = json.loads(progress.read_text())
    except (OSError, ValueError) as err:
        return f"the record is not readable JSON ({type(err).__name__})"
    if not isinstance(saved, dict) or {k: v for k, v in saved.items() if k not in ("done", "crc_vectors", "crc_ok")} != job:
        return "it records another job (checkpoint, data, model or options differ)"
    done, crc_vectors, crc_ok = saved.get("done"), saved.get("crc_vectors"), saved.get("crc_ok")
    if not all(isinstance(v, int) for v in (done, crc_vectors, crc_ok)) or not 0 <= done <= job["count"]:
        return "the record lacks its progress or checksums"
    try:
        vectors, ok = load_array(vectors_path, mmap_mode="r+"), load_array(ok_path, mmap_mode="r+")
    except (OSError, ValueError) as err:
        return f"a work file is missing or cut short ({type(err).__name__})"
    if vectors.shape != (job["count"], job["dim"]) or vectors.dtype != np.float32 or ok.shape != (job["count"],):
        return "a work file has another shape"
    if (_crc(vectors, done), _crc(ok, done)) != (crc_vectors, crc_ok):
        return "the work files do not match their checksums"
    return Work(vectors, ok, done, crc_vectors, crc_ok, progress, job)


def _crc(array: np.ndarray, rows: int) -> int:
    crc = 0
    for start in range(0, rows, CRC_BLOCK):
        crc = zlib.crc32(np.ascontiguousarray(array[start : min(rows, start + CRC_BLOCK)]).tobytes(), crc)
    return crc


def remove_work(out: Path) -> None:
    for path in work_paths(out):
        path.unlink(missing_ok=True)
