"""Bounded ``event_id`` de-duplication that survives restarts.

An event id is reduced to a 64-bit blake2b hash. Hashes are kept by *ingest time* (the
wall-clock time the service accepted the event, not the event's own ``ts``: a replayed
month-old log is still de-duplicated, and memory depends only on how much was ingested
in the window) in ``n_buckets`` time buckets of ``window / n_buckets`` seconds each. A
bucket is dropped once all of it is older than the window, so an id is remembered for at
least ``window`` seconds and at most one bucket longer; with the 7-day default, buckets
are days.

The outcome archive (:mod:`serving.archive`) keeps only the hash of each event. An archived
row ingested again gets the id ``archived:<the hash as 16 hex digits>``
(:func:`archived_event_id`), whose hash is that very hash: it is the same event, a
duplicate wherever the original is still remembered, and archived again under its own hash.

Each bucket holds sorted ``uint64`` runs merged like a binary counter (a new run is
merged with the previous one while it is at least half its size), so a bucket has
``O(log n)`` runs, a batch look-up is a few vectorised ``searchsorted`` calls and memory
is 8 bytes per remembered id. Two distinct ids collide with probability ``2**-64``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidState

DAY_SECONDS = 86400.0


#: Prefix of the ids of archived events: ``archived:`` + the event hash as 16 lowercase hex digits.
ARCHIVED_ID_PREFIX = "archived:"
_ARCHIVED_ID = re.compile(r"archived:[0-9a-f]{16}")


def archived_event_id(event_hash: int) -> str:
    """The event id of an archived event (the archive keeps only its 64-bit hash)."""
    return f"{ARCHIVED_ID_PREFIX}{int(event_hash):016x}"


def event_hashes(event_ids: Sequence[str]) -> NDArray[np.uint64]:
    """64-bit hashes of event ids, shape [n]: blake2b, except that an archived event's id
    (:func:`archived_event_id`) is its original hash."""
    blake = hashlib.blake2b
    raw = b"".join(
        int(e[len(ARCHIVED_ID_PREFIX) :], 16).to_bytes(8, "little")
        if e.startswith(ARCHIVED_ID_PREFIX) and _ARCHIVED_ID.fullmatch(e)
        else blake(e.encode(), digest_size=8).digest()
        for e in event_ids
    )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def _new_value_mask(sorted_values: NDArray) -> NDArray[np.bool_]:
    """True where a sorted array [n] holds a value different from its predecessor."""
    mask = np.empty(len(sorted_values), dtype=bool)
    if len(mask):
        mask[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=mask[1:])
    return mask


def sorted_unique(values: NDArray[np.uint64], *, runs: bool = False) -> NDArray[np.uint64]:
    """``np.unique`` by sorting: numpy 2.4's hash-based ``unique`` takes seconds on millions
    of random 64-bit values where a sort takes milliseconds. With ``runs`` (a concatenation
    of sorted runs) a stable sort (timsort) merges them (two in linear time); values in no
    order go to numpy's vectorised quicksort (10 M replayed hashes: less than half the time). Equal
    values are equal integers, so the result does not depend on the sort."""
    ordered = np.sort(values, kind="stable" if runs else None)
    return ordered[_new_value_mask(ordered)]


def first_occurrences(hashes: NDArray[np.uint64]) -> NDArray[np.bool_]:
    """True at the first occurrence of each value in ``hashes`` [n] (in order)."""
    order = np.argsort(hashes, kind="stable")  # equal values keep their input order
    first = np.empty(len(hashes), dtype=bool)
    first[order] = _new_value_mask(hashes[order])
    return first


def _member(run: NDArray[np.uint64], sorted_keys: NDArray[np.uint64]) -> NDArray[np.bool_]:
    pos = np.searchsorted(run, sorted_keys)
    np.minimum(pos, len(run) - 1, out=pos)
    return run[pos] == sorted_keys


class DedupeWindow:
    """Hashes of event ids seen in the last ``window_seconds`` of ingest time."""

    def __init__(self, window_seconds: float = 7 * DAY_SECONDS, n_buckets: int = 7) -> None:
        if not (window_seconds > 0) or not math.isfinite(window_seconds):
            raise ValueError(f"window_seconds must be a positive number, got {window_seconds}")
        if n_buckets < 1:
            raise ValueError("n_buckets must be >= 1")
        self.window_seconds = float(window_seconds)
        self.n_buckets = int(n_buckets)
        self.bucket_seconds = self.window_seconds / self.n_buckets
        self._buckets: dict[int, list[NDArray[np.uint64]]] = {}
        #: (bucket, sorted hashes) added since the last :meth:`take_added`: an incremental snapshot's part.
        self._added: list[tuple[int, NDArray[np.uint64]]] = []

    def __len__(self) -> int:
        return sum(len(r) for runs in self._buckets.values() for r in runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for runs in self._buckets.values() for r in runs)

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.bucket_seconds)

    def expire(self, now: float) -> None:
        """Drop buckets that lie wholly before ``now - window``."""
        oldest = now - self.window_seconds
        for b in [b for b in self._buckets if (b + 1) * self.bucket_seconds <= oldest]:
            del self._buckets[b]

    def contains(self, hashes: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """Whether each hash [n] is remembered (in the window's buckets)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        found = np.zeros(len(hashes), dtype=bool)
        if not len(hashes) or not self._buckets:
            return found
        order = np.argsort(hashes, kind="stable")
        keys = hashes[order]
        hit = np.zeros(len(keys), dtype=bool)
        for runs in self._buckets.values():
            for run in runs:
                hit |= _member(run, keys)
        found[order] = hit
        return found

    def add(self, hashes: NDArray[np.uint64], t: float) -> None:
        """Remember ``hashes`` as ingested at time ``t`` (repeats are harmless)."""
        run = sorted_unique(np.asarray(hashes, dtype=np.uint64))
        if not len(run):
            return
        bucket = self._bucket(t)
        self._added.append((bucket, run))
        runs = self._buckets.setdefault(bucket, [])
        runs.append(run)
        while len(runs) >= 2 and 2 * len(runs[-1]) >= len(runs[-2]):
            top = runs.pop()
            runs[-1] = sorted_unique(np.concatenate((runs[-1], top)), runs=True)

    def check_and_add(self, hashes: NDArray[np.uint64], t: float) -> NDArray[np.bool_]:
        """Duplicate mask [n] (already remembered, or repeated earlier in ``hashes``);
        the new ones are remembered as ingested at ``t``. Expires old buckets first."""
        self.expire(t)
        hashes = np.asarray(hashes, dtype=np.uint64)
        dup = ~first_occurrences(hashes) | self.contains(hashes)
        self.add(hashes[~dup], t)
        return dup

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays: bucket ids [k], all hashes [m] and bucket offsets [k + 1]."""
        buckets = sorted(self._buckets)
        runs = []
        for b in buckets:
            merged = self._buckets[b]
            runs.append(merged[0] if len(merged) == 1 else sorted_unique(np.concatenate(merged), runs=True))
        offsets = np.zeros(len(buckets) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in runs])
        return {
            "dedupe_window": np.array([self.window_seconds, self.n_buckets], dtype=np.float64),
            "dedupe_buckets": np.array(buckets, dtype=np.int64),
            "dedupe_hashes": np.concatenate(runs) if runs else np.empty(0, np.uint64),
            "dedupe_offsets": offsets,
        }

    def frozen(self) -> DedupeWindow:
        """A copy that shares the (never modified) hash runs: its :meth:`state` can be computed
        later, outside the lock that guards this window, at the cost of a few list copies."""
        copy = DedupeWindow(self.window_seconds, self.n_buckets)
        copy._buckets = {b: list(runs) for b, runs in self._buckets.items()}
        return copy

    def take_added(self) -> dict[str, np.ndarray]:
        """The hashes added since the last call (or :meth:`load_state`), by bucket, as plain
        arrays (:meth:`add_state` adds them to a window restored from an earlier state)."""
        added, self._added = self._added, []
        offsets = np.zeros(len(added) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(run) for _, run in added])
        return {
            "dedupe_added_buckets": np.array([b for b, _ in added], dtype=np.int64),
            "dedupe_added_hashes": np.concatenate([run for _, run in added]) if added else np.empty(0, np.uint64),
            "dedupe_added_offsets": offsets,
        }

    def add_state(self, added: dict[str, np.ndarray]) -> None:
        """Add the hashes of a :meth:`take_added` of a window with the same bucket width."""
        try:
            buckets = np.asarray(added["dedupe_added_buckets"], dtype=np.int64)
            hashes = np.asarray(added["dedupe_added_hashes"], dtype=np.uint64)
            offsets = np.asarray(added["dedupe_added_offsets"], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise InvalidState(f"de-duplication changes are unreadable: {exc}") from None
        if len(offsets) != len(buckets) + 1 or offsets[-1] != len(hashes):
            raise InvalidState("de-duplication changes have inconsistent offsets")
        for i, b in enumerate(buckets.tolist()):
            self.add(hashes[offsets[i] : offsets[i + 1]], (b + 0.5) * self.bucket_seconds)

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the contents by a :meth:`state` (of a window with any bucket width)."""
        try:
            window, n_buckets = (float(x) for x in state["dedupe_window"])
            buckets = np.asarray(state["dedupe_buckets"], dtype=np.int64)
            hashes = np.asarray(state["dedupe_hashes"], dtype=np.uint64)
            offsets = np.asarray(state["dedupe_offsets"], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise InvalidState(f"de-duplication state is unreadable: {exc}") from None
        if len(offsets) != len(buckets) + 1 or (len(offsets) and offsets[-1] != len(hashes)):
            raise InvalidState("de-duplication state has inconsistent offsets")
        width = window / n_buckets
        self._buckets = {}
        for i, b in enumerate(buckets):
            # Re-filed under the bucket of its last instant, so a wider or narrower
            # bucket width never forgets an id earlier than the saved window promised.
            self.add(hashes[offsets[i] : offsets[i + 1]], float(b) * width + 0.999 * width)
        self._added = []
