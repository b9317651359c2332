"""Images of any number of channels (`--in-channels`, issue 21): microscopy and remote sensing come as grayscale
files, multi-page TIFFs (one band a page) or `.npy` arrays, and `convert("RGB")` would throw their bands away.

With 3 channels every file is converted to RGB, as always. With any other count a file must hold exactly that
many bands: a one-band image (8- or 16-bit) for 1, a multi-page TIFF of one-band pages or a single multi-band page
(RGBA, CMYK: 4), or a `.npy` array [C, H, W] or [H, W, C] ([H, W] for 1; [C, H, W] when both ends fit). Anything
else is a `BadFile`, skipped and counted like any broken file. Values become uint8 as `to_uint8` says: 8-bit as
they are, 16-bit scaled by 255/65535 (or `--value-range LOW,HIGH` onto 0..255, for data such as 12-bit microscopy
that uses a part of its type's range and would otherwise keep a sixteenth of the 256 levels), so that every image
reaches the encoder in [0, 1] whatever its depth.

Nothing here opens a file: `torchclr.data.reader` opens it and hands the decoded pixels or header over.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from torchclr.data.skips import BadFile, ValueRange

NPY_MAGIC = b"\x93NUMPY"
RGB = 3
_ONE_BAND_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_npy(data: bytes) -> bool:
    """Whether `data` is a numpy .npy file (by its magic bytes, not its name)."""
    return data[:6] == NPY_MAGIC


def wrong_channels(where: str, found: int, channels: int, what: str) -> BadFile:
    """The skip record of a file with another channel count than --in-channels (grouped by the count asked for)."""
    return BadFile(where, f"not {channels}-channel", f"{what} has {found} channel{'s' * (found != 1)}, "
                   f"--in-channels is {channels}")


def npy_header(data: bytes, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header alone; a broken header or a type that holds no pixels is a `BadFile`."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream)
    except (ValueError, OSError, SyntaxError) as err:
        raise BadFile(where, "truncated or corrupt", f"not a readable .npy header: {err}") from None
    if dtype.kind not in "uif":
        raise BadFile(where, "not an image", f"a .npy array of {dtype} holds no pixel values")
    return tuple(shape), dtype


def array_layout(shape: tuple[int, ...], channels: int, where: str) -> tuple[int, int, bool]:
    """(height, width, channels first) of an array of `shape` with `channels` bands: [C, H, W] is preferred to
    [H, W, C] when both fit, and a 2-D array is one band."""
    if len(shape) == 2 and channels == 1:
        return shape[0], shape[1], True
    if len(shape) == 3 and shape[0] == channels:
        return shape[1], shape[2], True
    if len(shape) == 3 and shape[2] == channels:
        return shape[0], shape[1], False
    if len(shape) not in (2, 3):
        raise BadFile(where, "not an image", f"a .npy array of shape {list(shape)}: give [C, H, W] or [H, W, C]")
    found = 1 if len(shape) == 2 else min(shape[0], shape[2])  # the channels are the shorter end
    raise wrong_channels(where, found, channels, f"a .npy array of shape {list(shape)}")


def to_uint8(values: np.ndarray, value_range: ValueRange = None) -> np.ndarray:
    """uint8 of the same shape: 8-bit values as they are; with `value_range` (LOW, HIGH) other values map LOW..HIGH
    onto 0..255, clipped outside; without it, other integers are taken as 16-bit (v * 255 / 65535) unless a value
    lies outside 0..65535, floats as 0..1 when they lie in it, otherwise their own min..max is stretched onto 0..255
    (NaN and infinities count as 0). Scaled, not clipped: PIL's convert clips 16-bit images to white."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:  # PIL's bilevel mode "1"
        return values.astype(np.uint8) * 255
    if value_range is not None:
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = value_range
    elif values.dtype.kind == "f":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        in_range = values.size and values.min() >= 0 and values.max() <= 1
        low, high = (0.0, 1.0) if in_range else (values.min(), values.max())
    else:
        values = values.astype(np.float64)
        in_range = values.size and values.min() >= 0 and values.max() <= 65535
        low, high = (0.0, 65535.0) if in_range else (values.min(), values.max())
    scaled = np.round((values - low) * (255.0 / max(high - low, 1e-12)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def array_to_tensor(array: np.ndarray, channels: int, where: str, value_range: ValueRange = None) -> torch.Tensor:
    """A decoded .npy array as uint8 [channels, H, W]."""
    _, _, first = array_layout(array.shape, channels, where)
    planes = array.reshape(1, *array.shape) if array.ndim == 2 else array if first else np.moveaxis(array, 2, 0)
    return torch.from_numpy(np.ascontiguousarray(to_uint8(np.asarray(planes), value_range)))


def image_channels(img: Image.Image) -> int:
    """The bands of an opened PIL image: one-band pages of a multi-page file count one each; a palette counts 3."""
    if img.mode in _ONE_BAND_MODES:
        return max(1, getattr(img, "n_frames", 1))
    return RGB if img.mode == "P" else len(img.getbands())


def check_image_channels(img: Image.Image, channels: int, where: str) -> None:
    """A `BadFile` unless the opened image holds `channels` bands (any image is fine for RGB: it is converted)."""
    found = image_channels(img)
    if channels != RGB and found != channels:
        raise wrong_channels(where, found, channels, f"a {img.format or 'PIL'} {img.mode} image")


def image_to_tensor(img: Image.Image, channels: int, where: str, value_range: ValueRange = None) -> torch.Tensor:
    """An opened PIL image of `channels` bands (checked) as uint8 [channels, H, W]; each page of a multi-page file
    is one band, and 16-bit pages are scaled, not clipped."""
    check_image_channels(img, channels, where)
    if img.mode not in _ONE_BAND_MODES:  # one page of several bands
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))
    pages, size = [], img.size
    for page in range(channels):
        img.seek(page)
        if img.mode not in _ONE_BAND_MODES or img.size != size:
            raise BadFile(where, "not an image", f"page {page + 1} is {img.mode} {img.size[0]}x{img.size[1]}: every page "
                          "of a multi-band TIFF must be one band of the first page's size")
        pages.append(to_uint8(np.asarray(img), value_range))
    return torch.from_numpy(np.stack(pages))



def preview_rgb(image: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] a person can look at (contact sheets, the report's views): RGB as it is, any other count
    as the gray of its bands' mean."""
    if image.shape[0] == RGB:
        return image
    return image.float().mean(dim=0, keepdim=True).round().to(torch.uint8).expand(RGB, -1, -1)
