"""Bad image files: skipped and counted, so that a few broken files among many never end a long run.

A folder nobody has checked holds zero-byte files, truncated downloads, text files named .jpg, FIFOs,
dangling symlinks and decompression bombs. Each is recorded here with a short kind ("zero-byte",
"not an image", ...) and the details; the run prints how many were skipped and why and writes the list
to its folder. With `--strict` the first one stops the run instead, naming the file.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torchclr.errors import UserError
from torchclr.writer import csv_writer, write_atomically

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default limit (a 1 GiB RGBA image / 3)
DEFAULT_MAX_FILE_MB = 256


ValueRange = tuple[float, float] | None  # (LOW, HIGH) of pixel values mapped onto 0..255; None: the type's own range


@dataclass(frozen=True)
class ReadPolicy:
    """What one image file may be: larger files or images are skipped (never read whole, never decoded)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_MB << 20
    strict: bool = False
    channels: int = 3  # --in-channels: 3 converts any image to RGB; other counts take files with exactly that many bands
    value_range: ValueRange = None  # --value-range: the values of images deeper than 8 bits mapped onto 0..255


class BadFile(UserError):
    """One file that cannot be used; `kind` groups it in the skip report. Alone, it reads as a one-line error."""

    def __init__(self, where: str, kind: str | None = None, detail: str = "") -> None:
        # With `where` alone it is a message: DataLoader re-raises a worker's exception as type(message).
        super().__init__(where if kind is None else f"cannot use image {where}: {detail}")
        self.where, self.kind, self.detail = where, kind or "unusable", detail


class SkipLog:
    """The files left out of a data set and why; shared by the listing and the decoding threads."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.entries: list[BadFile] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, bad: BadFile) -> None:
        """Record `bad`; under --strict, stop on it instead."""
        if self.strict:
            raise UserError(f"{bad} (--strict: stopping at the first bad file)")
        with self._lock:
            self.entries.append(bad)

    def summary(self, total: int) -> str:
        """One line: how many of `total` listed files were skipped, by kind, most frequent first."""
        kinds = Counter(bad.kind for bad in self.entries).most_common()
        return f"skipped {len(self.entries)} of {total} image files (" + ", ".join(f"{n} {kind}" for kind, n in kinds) + ")"

    def write_csv(self, path: Path) -> None:
        """The skipped files as CSV (file, kind, detail), written atomically."""
        rows = ([bad.where, bad.kind, bad.detail] for bad in sorted(self.entries, key=lambda b: b.where))
        write_atomically(path, csv_writer(["file", "kind", "detail"], rows), what="the list of skipped files")
