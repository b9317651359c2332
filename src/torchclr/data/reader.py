"""The one reader: every image and array file torchclr opens goes through here.

Each new feature that opened files its own way (header sampling, previews, subsets, device decoding) missed a
guard the others had: a decompression bomb that the decoder skipped ended a run from the header sampler. So the
checks live in one place, and `tests/test_reader.py` fails when another module calls `Image.open`, torchvision's
`decode_jpeg` / `decode_image`, `np.load` or opens a zip or tar archive itself. What is checked here:

* the file kind when listing (`os.stat` only: FIFOs, devices, broken links, empty and oversized files are never
  opened) and the size while reading (never more than the limit + 1 byte);
* the pixel count from the header before any decoding (decompression bombs);
* decoding, with every error PIL's plugins raise on a malformed file (TypeError from a bad TIFF tag included)
  turned into a `BadFile` naming the file, which callers skip and count (`SkipLog`) or raise as one line;
* mode and bit-depth conversion to RGB uint8 (16-bit and float images scaled, not clipped);
* numpy arrays (work files, caches) never unpickled.

Multi-channel inputs (issue 21: multi-page TIFF, `.npy` of [C, H, W] or [H, W, C]) are in `decode_image`'s and
`header_size`'s dispatch by content, beside the PIL path, so that every caller gets them with the same limits and
skip records; `torchclr.data.bands` turns what is opened here into `channels` bands.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from torchclr.data import bands
from torchclr.data.skips import BadFile, ReadPolicy, ValueRange
from torchclr.errors import UserError

# torchclr checks every image against its own --max-image-pixels before decoding it, so PIL's warning is redundant.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# PIL's plugins warn about malformed metadata on stderr ("Truncated File Read", ...); a file that then fails is
# recorded here by name, so the warnings would only bury the one line that matters.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

# What PIL's format plugins raise on malformed files besides OSError: TIFF tags of the wrong type (TypeError),
# missing tags (KeyError), bad offsets (IndexError, struct.error), zero sizes (ZeroDivisionError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError, TypeError, KeyError,
                  IndexError, struct.error, ZeroDivisionError, AttributeError, RuntimeError)


# ---- files: checked when listed, read within the size limit ----

def check_listed_file(full: Path, where: str, max_bytes: int) -> os.stat_result:
    """`os.stat` only (never open): special files, broken symlinks, empty and oversized files raise `BadFile`."""
    try:
        info = full.stat()
    except OSError as err:
        kind = "dangling or looping symlink" if full.is_symlink() else "unreadable"
        raise BadFile(where, kind, err.strerror or str(err)) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadFile(where, "not a regular file", "a FIFO, socket or device, which is never opened")
    if info.st_size == 0:
        raise BadFile(where, "zero-byte", "the file is empty")
    if info.st_size > max_bytes:
        raise BadFile(where, "too large", f"{info.st_size} bytes is over --max-file-mb {max_bytes >> 20}")
    return info


def read_bytes(path: Path, where: str, max_bytes: int) -> bytes:
    """The file's bytes, never more than `max_bytes` (+1 to notice a file that grew); failures are `BadFile`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise BadFile(where, "unreadable", err.strerror or str(err)) from None
    if len(data) > max_bytes:
        raise BadFile(where, "too large", f"grew over --max-file-mb {max_bytes >> 20} since it was listed")
    return data


def read_image_file(path: str | Path, what: str, policy: ReadPolicy | None = None) -> torch.Tensor:
    """One image file named by the user (a query, a preview) as uint8 [C, H, W] (C: the policy's channels, RGB by
    default); any problem is one line
    naming `what` (e.g. "--query") and the path: a folder, a missing or special file, or an undecodable one."""
    policy = policy or ReadPolicy()
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give one image file")
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{what} {path} does not exist")
    try:
        check_listed_file(path, str(path), policy.max_file_bytes)
        return decode_image(read_bytes(path, str(path), policy.max_file_bytes), str(path), policy.max_image_pixels,
                            channels=policy.channels, value_range=policy.value_range)
    except BadFile as bad:
        raise UserError(f"{what} {path}: {bad.kind}: {bad.detail}") from None


# ---- images: header, decoding, conversion ----

def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """PIL's lazy image of `data` (header read, nothing decoded), refused past `max_pixels`."""
    if not data:
        raise BadFile(where, "zero-byte", "the file is empty")
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadFile(where, "not an image", "not an image format PIL can read") from None
    except Image.DecompressionBombError:  # PIL's own check, at twice the limit, fires while opening
        raise BadFile(where, "too many pixels", f"the header declares over twice --max-image-pixels {max_pixels}") from None
    except _DECODE_ERRORS as err:
        raise BadFile(where, "truncated or corrupt", f"{type(err).__name__}: {err}") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise BadFile(where, "too many pixels", f"{img.width}x{img.height} pixels is over --max-image-pixels {max_pixels}")
    return img


def header_size(data: bytes, where: str, max_pixels: int = ReadPolicy.max_image_pixels, *,
                channels: int = bands.RGB) -> tuple[int, int]:
    """(height, width) from the header alone; a bomb, a broken or a foreign file, or one without `channels` bands
    (see `torchclr.data.bands`), raises `BadFile`."""
    if bands.is_npy(data):
        return _npy_size(data, where, max_pixels, channels)
    with _open(data, where, max_pixels) as img:
        bands.check_image_channels(img, channels, where)
        return img.height, img.width


def _npy_size(data: bytes, where: str, max_pixels: int, channels: int) -> tuple[int, int]:
    """(height, width) of a .npy image of `channels` bands, from its header, refused past `max_pixels`."""
    height, width, _ = bands.array_layout(bands.npy_header(data, where)[0], channels, where)
    if height * width > max_pixels:
        raise BadFile(where, "too many pixels", f"{width}x{height} pixels is over --max-image-pixels {max_pixels}")
    return height, width


def _decode_npy(data: bytes, where: str, max_pixels: int, channels: int, value_range: ValueRange) -> torch.Tensor:
    """A .npy image (header checked first, never unpickled) as uint8 [channels, H, W]."""
    _npy_size(data, where, max_pixels, channels)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except _DECODE_ERRORS as err:
        raise BadFile(where, "truncated or corrupt", f"{type(err).__name__}: {err}") from None
    return bands.array_to_tensor(array, channels, where, value_range)


def decode_image(data: bytes, where: str, max_pixels: int = ReadPolicy.max_image_pixels,
                 draft_side: int | None = None, *, channels: int = bands.RGB, value_range: ValueRange = None) -> torch.Tensor:
    """Decode any PIL-readable image to RGB uint8 [3, H, W]; a broken file raises `BadFile` naming itself. With
    other `channels`, a PIL image or a .npy array of that many bands becomes uint8 [channels, H, W] (see
    `torchclr.data.bands`); one of another count is a `BadFile`. `value_range`: see `bands.to_uint8`.

    The pixel count is read from the header and checked before anything is decoded (decompression bombs). With
    `draft_side`, a JPEG whose longer side exceeds it is decoded by PIL's draft mode at the largest DCT reduction
    (1/2, 1/4 or 1/8) that keeps the longer side at least `draft_side`: a fraction of the work.
    """
    if bands.is_npy(data):
        return _decode_npy(data, where, max_pixels, channels, value_range)
    with _open(data, where, max_pixels) as img:
        try:
            if channels != bands.RGB:
                return bands.image_to_tensor(img, channels, where, value_range)
            width, height = img.size
            longest = max(width, height)
            if draft_side is not None and img.format == "JPEG" and longest > draft_side:
                img.draft("RGB", (-(-width * draft_side // longest), -(-height * draft_side // longest)))
            rgb = to_rgb8(img, value_range)
        except _DECODE_ERRORS as err:
            raise BadFile(where, "truncated or corrupt", f"{type(err).__name__}: {err}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def to_rgb8(img: Image.Image, value_range: ValueRange = None) -> np.ndarray:
    """RGB uint8 [H, W, 3]; 16-bit, 32-bit and float images are scaled to 8 bits (PIL's convert clips them).

    Integer images map their type's full range onto 0..255 (16-bit: v * 255 / 65535); float images are taken as
    0..1 when they lie in it, otherwise their own min..max is stretched onto 0..255; NaN counts as 0. A
    `value_range` (LOW, HIGH) replaces these: LOW..HIGH onto 0..255, clipped outside.
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return np.array(img.convert("RGB"))
    gray = bands.to_uint8(np.asarray(img), value_range)  # "I" is how PIL opens some 16-bit files too: 16 bits unless a value says otherwise
    return np.repeat(gray[..., None], 3, axis=2)


def is_jpeg_at_most(data: bytes, side: int, max_pixels: int) -> bool:
    """Whether `data` is a sound JPEG header whose longer side is at most `side` (anything else: False, and the
    worker's decoder names the problem)."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    try:
        return max(header_size(data, "", max_pixels)) <= side
    except BadFile:
        return False


def decode_jpegs(encoded: list[torch.Tensor], wheres: list[str], device: torch.device) -> list[torch.Tensor | str]:
    """JPEG bytes (uint8 tensors, headers already checked by `is_jpeg_at_most`) decoded on `device` in one call
    (nvJPEG on a GPU); if that call fails, each alone, so that only the broken ones are lost, each as its one line."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | str] = []
    for data, where in zip(encoded, wheres):
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[0].rsplit(", ", 1)[-1]  # drop torchvision's source location
            out.append(str(BadFile(where, "truncated or corrupt", reason)))
    return out


# ---- arrays: never unpickled ----

def load_array(path: str | Path, mmap_mode: Any = None) -> np.ndarray:
    """A `.npy` file as a plain array (memory-mapped with `mmap_mode`); pickled object arrays are refused
    (ValueError), as are cut files (ValueError / OSError from numpy): callers decide what that costs."""
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


# ---- zip archives: read in place ----

def is_zip(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def zip_members(path: Path, label: str) -> list[zipfile.ZipInfo]:
    """The archive's file members (no folders); an unreadable archive is one line naming `label`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"data archive {label} is not a readable zip: {err}") from None


class ZipMemberReader:
    """Reads members of a zip in place; reopens the archive in each worker process (handles are not fork-safe)."""

    def __init__(self, path: Path, prefix: str, origin: str, max_bytes: int) -> None:
        """`origin`: the set's name for the files (`ImageSet.origin`): a bad member is named as its decoder names it."""
        self.path, self.prefix, self.origin, self.max_bytes = path, prefix, origin, max_bytes
        self._archive: zipfile.ZipFile | None = None
        self._pid = -1

    def __call__(self, name: str) -> bytes:
        if self._archive is None or self._pid != os.getpid():
            self._archive, self._pid = zipfile.ZipFile(self.path), os.getpid()
        where = f"{self.origin}/{name}"
        try:
            with self._archive.open(self.prefix + name) as member:  # sizes were checked when listed; read no more
                data = member.read(self.max_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
            kind = "bad CRC" if "CRC" in str(err) else "corrupt zip member"
            raise BadFile(where, kind, str(err)) from None
        if len(data) > self.max_bytes:
            raise BadFile(where, "too large", f"inflates to over --max-file-mb {self.max_bytes >> 20}")
        return data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archive": None, "_pid": -1}
