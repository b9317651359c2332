"""Packed image names behave as the list of str they replace."""

import pickle

import pytest

from torchclr.data.names import PackedNames


NAMES = ["a/0001.jpg", "a/0002.jpg", "b/ünïcode.jpg", "b/z.png", ""]


def test_packed_names_read_back_as_the_list():
    packed = PackedNames.build(iter(NAMES))  # a generator: packing never needs the list
    assert len(packed) == len(NAMES)
    assert list(packed) == NAMES
    assert [packed[i] for i in range(-len(NAMES), 0)] == NAMES
    assert packed[1:4] == NAMES[1:4] and packed[::-2] == NAMES[::-2]
    assert "b/z.png" in packed and packed.index("b/z.png") == 3
    with pytest.raises(IndexError):
        packed[len(NAMES)]
    assert list(pickle.loads(pickle.dumps(packed))) == NAMES  # DataLoader workers under spawn receive it pickled


def test_sorted_position_finds_only_present_names():
    names = sorted(f"shard-{s}/{i:05d}.jpg" for s in range(3) for i in range(0, 200, 2))
    packed = PackedNames.build(names)
    assert packed.is_sorted()
    assert [packed.sorted_position(name) for name in names] == list(range(len(names)))
    assert packed.sorted_position("shard-1/00001.jpg") == -1 and packed.sorted_position("zzz") == -1
    assert not PackedNames.build(reversed(names)).is_sorted()


def test_empty():
    packed = PackedNames.build([])
    assert len(packed) == 0 and not packed and list(packed) == []
