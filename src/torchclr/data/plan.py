"""How a run holds its data, decided from the data and the machine: in memory or streamed, and the view size.

Decoding a whole set into RAM is the fastest path while it fits and a crash when it does not (300,000 JPEGs at
224 px ask for 59 GB). So `auto` streams when the decoded set would take more than a share of the memory
available now, and a folder of photos gets a view size that suits photos; both choices are printed with why.
"""

from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass

from torchclr.data.reader import header_size
from torchclr.data.skips import BadFile
from torchclr.data.sources import ImageSet

MEMORY_SHARE = 0.25  # of the memory available at the start that the in-memory path may fill
SIZE_SAMPLE = 32  # images whose headers decide the default view size
DATA_MODES = ("auto", "memory", "stream")


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable of /proc/meminfo; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def sample_sizes(images: ImageSet, count: int = SIZE_SAMPLE, seed: int = 0) -> list[tuple[int, int]]:
    """(height, width) of a seeded sample of images, read from their headers (nothing is decoded)."""
    if images.tensor is not None:
        return [tuple(images.tensor.shape[-2:])]  # type: ignore[list-item]
    chosen = random.Random(seed).sample(range(len(images)), min(count, len(images)))
    sizes = []
    for index in chosen:
        name = images.names[index]
        try:
            sizes.append(header_size(images.read_bytes(name), f"{images.origin}/{name}", images.policy.max_image_pixels,  # type: ignore[misc]
                                     channels=images.policy.channels))
        except BadFile:
            continue  # skipped and counted where it is decoded, once
    return sizes


def default_image_size(sizes: list[tuple[int, int]]) -> int:
    """32 px views for images of 64 px or less, 96 up to 160 px, 224 above (by the median longer side)."""
    longest = statistics.median(max(size) for size in sizes) if sizes else 32
    return 32 if longest <= 64 else 96 if longest <= 160 else 224


@dataclass(frozen=True)
class DataPlan:
    mode: str  # "memory" or "stream"
    reason: str


def choose_mode(requested: str, count: int, stored_side: int, sizes: list[tuple[int, int]], *, channels: int = 3) -> DataPlan:
    """In memory or streamed: as requested, or for `auto` by whether [count, channels, S, S] uint8 fits the memory share.

    S is the stored side, or the largest sampled image's longer side when the images are all smaller.
    """
    side = min(stored_side, max((max(size) for size in sizes), default=stored_side))
    needed, available = count * channels * side * side, available_memory()
    sizes_said = f"decoded at {side} px they take {_bytes(needed)}"
    if requested != "auto":
        return DataPlan(requested, f"--data-mode {requested} ({sizes_said})")
    budget = MEMORY_SHARE * available
    if needed > budget:
        return DataPlan("stream", f"{sizes_said}, more than {MEMORY_SHARE:.0%} of the {_bytes(available)} available")
    return DataPlan("memory", f"{sizes_said}, within {MEMORY_SHARE:.0%} of the {_bytes(available)} available")


def fits_in_memory(nbytes: int) -> bool:
    """Whether `nbytes` of decoded images stay within the memory share (evaluation sets decide by it too)."""
    return nbytes <= MEMORY_SHARE * available_memory()


def _bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
