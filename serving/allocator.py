"""Large temporary arrays that reuse freed memory during a replay (glibc malloc).

glibc serves every allocation above its mmap threshold with a fresh mapping and unmaps it
on free; the threshold adapts upwards, but never beyond 32 MiB. A replay group over a
placement of 10,000 segments × 20 networks makes many temporaries above that (an
hour-level array ``[200,000, 24]`` is 38 MB), each then faulted in page by page and zeroed
by the kernel: at 10 M events behind a snapshot, ~10^6 page faults (~20 GB zeroed, much of
it in 2 MB pages) and a third of the restart's CPU time, more under load.

:func:`reuse_freed_memory` raises the thresholds for the duration of a block, so such
arrays come from and go back to the heap, and afterwards sets them where glibc's own
adaptation ends (mmap above 32 MiB, trim above 64 MiB) and returns the free heap to the
system (``malloc_trim``, after a garbage collection): the live process keeps its memory
behaviour, and its resident memory after a restart is what it was (1.2 GB in the scale
benchmark, against a peak of 2.8 GB while replaying). Elsewhere (another
C library, no ``mallopt``) it does nothing. Only speed changes, never a result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: ``mallopt`` parameters (``<malloc.h>``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: While replaying: allocations up to this size come from the heap, which keeps this much free.
REPLAY_THRESHOLD = 1 << 30
#: Afterwards: where glibc's dynamic thresholds end up (DEFAULT_MMAP_THRESHOLD_MAX on 64 bits,
#: and twice that for trimming).
LIVE_MMAP_THRESHOLD, LIVE_TRIM_THRESHOLD = 32 << 20, 64 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, large arrays reuse freed heap memory (see module docstring); yields
    whether the allocator could be tuned."""
    libc = _libc()
    tuned = libc is not None and all(
        libc.mallopt(param, REPLAY_THRESHOLD) == 1 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
    )
    try:
        yield tuned
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, LIVE_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, LIVE_TRIM_THRESHOLD)
            gc.collect()  # arrays held only by reference cycles, so their heap memory is free too
            libc.malloc_trim(0)
