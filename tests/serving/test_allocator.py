"""The allocator settings of a store's open are scoped: numpy's huge-page setting comes back,
and arrays made inside the block are ordinary arrays (only speed changes)."""

from __future__ import annotations

import numpy as np
import pytest

from serving import allocator


@pytest.mark.skipif(allocator._set_madvise_hugepage is None, reason="numpy without the huge-page switch")
@pytest.mark.parametrize("before", [True, False])
def test_numpy_huge_page_setting_is_given_back(before):
    set_hugepage = allocator._set_madvise_hugepage
    previous = set_hugepage(before)
    try:
        with allocator.fewer_page_faults():
            assert set_hugepage(False) is False  # off inside the block
        assert set_hugepage(previous) is before  # back to what it was after it
    finally:
        set_hugepage(previous)


def test_arrays_made_inside_the_block_are_ordinary_and_outlive_it():
    with allocator.fewer_page_faults():
        big = np.zeros((200_000, 24))  # 38 MB: from the heap inside the block
        big[::1000] = 1.0
        total = float(big.sum())
    assert total == 200.0 * 24
    assert float(big.sum()) == total


def test_the_block_gives_settings_back_when_it_raises():
    set_hugepage = allocator._set_madvise_hugepage
    previous = set_hugepage(True) if set_hugepage is not None else None
    with pytest.raises(RuntimeError), allocator.fewer_page_faults():
        raise RuntimeError("replay failed")
    if set_hugepage is not None:
        assert set_hugepage(previous) is True
