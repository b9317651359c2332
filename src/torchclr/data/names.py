"""Image names of a large set, packed: one UTF-8 buffer and an array of offsets instead of a list of `str`.

A million names as a list of Python strings cost ~80 bytes each, and every DataLoader worker that reads them
(CPython writes each object's reference count on access) turns the pages it touches into private copies. Packed,
they cost their UTF-8 length plus 8 bytes, and no read writes to them.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


class PackedNames(Sequence[str]):
    """An immutable sequence of names, read as `str` one at a time."""

    def __init__(self, buffer: bytes | bytearray, offsets: np.ndarray) -> None:
        self._buffer, self._offsets = buffer, offsets  # name i is buffer[offsets[i]:offsets[i + 1]]

    @classmethod
    def build(cls, names: Iterable[str]) -> PackedNames:
        """Pack `names` as they come, without holding them all as objects at once."""
        buffer, offsets = bytearray(), array("q", [0])
        for name in names:
            buffer += name.encode()
            offsets.append(len(buffer))
        return cls(buffer, np.frombuffer(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"name index {index} out of range for {len(self)} names")
        return self._buffer[self._offsets[index] : self._offsets[index + 1]].decode()

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def is_sorted(self) -> bool:
        return all(self[i] < self[i + 1] for i in range(len(self) - 1))

    def sorted_position(self, name: str) -> int:
        """Index of `name` in a sorted sequence, by bisection; -1 when absent."""
        position = bisect.bisect_left(self, name)
        return position if position < len(self) and self[position] == name else -1
