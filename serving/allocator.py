"""Fewer page faults while a store opens: temporaries reuse freed memory, in small pages.

A replay group over a placement of 10,000 segments × 20 networks makes many large
temporaries (an hour-level array ``[200,000, 24]`` is 38 MB). Two defaults make each of
them cost fresh memory, faulted in and zeroed by the kernel:

* glibc serves every allocation above its mmap threshold with a fresh mapping and unmaps it
  on free; the threshold adapts upwards, but never beyond 32 MiB;
* numpy asks for transparent huge pages for arrays of 4 MB or more (``madvise``), so the
  first touch of any 4 KB of such memory zeroes its whole 2 MB page.

At 10 M events behind a snapshot that was ~10^6 page faults and ~20 GB zeroed, a third of
the restart's CPU time (``clear_page`` in a profile), more under load. :func:`fewer_page_faults`
changes both for the duration of a block: allocations up to 1 GiB come from and go back to
the heap, and numpy does not ask for huge pages. Afterwards it sets glibc's thresholds where
its own adaptation ends (mmap above 32 MiB, trim above 64 MiB), gives numpy's setting back,
and, when the block grew the heap by at least the trim threshold, collects garbage and
returns the free heap to the system (``malloc_trim``): the live process keeps its memory
behaviour, and its resident memory after a restart is what it was. A smaller block leaves
nothing worth a full collection, which costs ~0.2 s in a process holding many objects
(a store opened again and again in one process paid that on every open). Without glibc or
that numpy hook the matching half does nothing (without glibc's ``mallinfo2`` the heap's
growth is unknown and garbage is always collected). Only speed changes, never a result.

The live store calls :func:`return_free_memory` after each snapshot and every 10 s in the
applier: what snapshots copy and refits replace is given back instead of kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

try:  # numpy's switch for asking huge pages (NUMPY_MADVISE_HUGEPAGE at import)
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # pragma: no cover - another numpy layout
    _set_madvise_hugepage = None

#: ``mallopt`` parameters (``<malloc.h>``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Within the block: allocations up to this size come from the heap, which keeps this much free.
HEAP_THRESHOLD = 1 << 30
#: Afterwards: where glibc's dynamic thresholds end up (DEFAULT_MMAP_THRESHOLD_MAX on 64 bits,
#: and twice that for trimming).
LIVE_MMAP_THRESHOLD, LIVE_TRIM_THRESHOLD = 32 << 20, 64 << 20


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (``<malloc.h>``, glibc 2.33 on)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def heap_bytes() -> int | None:
    """Bytes the heap holds from the system (its arenas and its mmapped chunks), or None
    without glibc's ``mallinfo2``."""
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None) if libc is not None else None
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.arena + info.hblkhd)


@contextmanager
def fewer_page_faults() -> Iterator[None]:
    """Within the block, large arrays reuse freed heap memory and numpy asks for no huge
    pages (see module docstring)."""
    libc = _libc()
    heap_before = heap_bytes()
    if libc is not None:
        for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
            libc.mallopt(param, HEAP_THRESHOLD)
    hugepage = _set_madvise_hugepage(False) if _set_madvise_hugepage is not None else None
    try:
        yield
    finally:
        if _set_madvise_hugepage is not None:
            _set_madvise_hugepage(hugepage)
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, LIVE_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, LIVE_TRIM_THRESHOLD)
        heap_after = heap_bytes()
        if heap_before is None or heap_after is None or heap_after - heap_before >= LIVE_TRIM_THRESHOLD:
            gc.collect()  # arrays held only by reference cycles, so their heap memory is free too
            return_free_memory()


def return_free_memory() -> None:
    """Give the free heap back to the system (glibc ``malloc_trim``; nothing elsewhere).

    A snapshot copies what it writes (a base: the whole policy, ~0.65 GB at 10,000 segments
    × 20 networks) in arrays below the mmap threshold, from the heap of the thread that
    captures it; freed, that memory used to stay with the process (a service at that scale
    went from 1.36 to 1.66 GB resident after its first base snapshot)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
