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


def test_the_store_gives_the_free_heap_back_after_snapshots_and_from_its_applier(tmp_path, monkeypatch):
    """What snapshots copy and refits replace goes back to the system: after every snapshot,
    and from the applier every ``TRIM_EVERY_S``."""
    import time

    from serving import store as store_module

    calls = []
    monkeypatch.setattr(store_module, "return_free_memory", lambda: calls.append(time.monotonic()))
    monkeypatch.setattr(store_module, "TRIM_EVERY_S", 0.05)
    store = store_module.PolicyStore(tmp_path / "state", apply_every_s=0.01, snapshot_every_s=1e9)
    store.open()
    try:
        deadline = time.monotonic() + 10.0
        while len(calls) < 3 and time.monotonic() < deadline:  # the applier's
            time.sleep(0.02)
        assert len(calls) >= 3
        before = len(calls)
        monkeypatch.setattr(store_module, "TRIM_EVERY_S", 1e9)  # only snapshots from here
        time.sleep(0.1)
        settled = len(calls)
        assert settled - before <= 1  # at most one pass that had begun before
        store.snapshot(full=True)
        assert len(calls) == settled + 1
    finally:
        store.close()


def test_free_heap_is_given_back_without_error():
    allocator.return_free_memory()  # glibc: malloc_trim; elsewhere nothing


@pytest.mark.skipif(allocator.heap_bytes() is None, reason="no glibc mallinfo2: garbage is always collected")
@pytest.mark.parametrize(("size", "collected"), [(allocator.HEAP_THRESHOLD, True), (1 << 20, False)])
def test_garbage_is_collected_after_a_block_that_grew_the_heap(size, collected):
    """After a block that grew the heap by the trim threshold or more, an array held only by a
    reference cycle is freed at once; after a small block the cycle waits for Python's own
    collector (a full collection costs more than it could give back). The large array is a
    fresh mapping (at the heap threshold), so the heap grows whatever it held free before;
    neither array is touched."""
    import gc
    import weakref

    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        with allocator.fewer_page_faults():
            array = np.empty(size, dtype=np.uint8)
            cycle: list = [array]
            cycle.append(cycle)
            alive = weakref.ref(array)
            del array, cycle
        assert (alive() is None) is collected
    finally:
        gc.collect()
        if enabled:
            gc.enable()
