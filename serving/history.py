"""A compact time series per placement for the console: allocations, revenue, fill, alarms.

Every ``every_s`` seconds the store's history thread takes, per placement, what its
variants learned since the last tick (:class:`WindowTally`, filled by the applier under each
variant's learn lock) and the champion's allocation, and :class:`HistoryRecorder` appends one
*point* per series — the placement as a whole (segment ``*``) and each of its tracked
segments (the first ``max_segments`` seen, kept across restarts):

    {"t": 1764672000.0, "s": "KR|ios", "req": 812, "fill": 640, "rev": 1523.7,
     "last": 1764671999.2, "n": {"admob": [0.61, 1.35], "adfit": [0.27, 0.9], ...}}

and, on the placement's own series (``*``) while an experiment runs, the live experiment's
report at that time: per variant other than the champion ``[requests, lift, ci_low, ci_high,
p_value_always_valid]`` (:func:`serving.report.experiment_report`; ``null`` until defined)::

    {..., "s": "*", ..., "x": {"challenger": [5120, 0.031, -0.012, 0.074, 0.41]}}

(files written before it existed have no ``x``: no experiment history there).

``t`` is the server time of the tick (the window is the time since the previous point),
``req``/``fill``/``rev`` the window's outcome events, fills and revenue (sum of CPM; revenue
per request is ``rev / req``), ``last`` the newest event time learned so far, ``n`` per network
its exposure weight and floor (CPM), ``x`` the experiment (cumulative since it began: the lift
and its CI as the report gave them then). Change alarms (:class:`bandit.drift.ChangeAlarm`) are
lines ``{"t": …, "alarm": {"ts", "segment", "network", "relative"}}``.

**On disk**: ``STATE_DIR/history/<placement>.ndjson``, append-only JSON lines. A torn or
unreadable line (a crash mid-write) is skipped at load and the file rewritten without it.
**Bounded**: a series keeps at most ``max_points`` points; when full, its older half is
thinned by merging neighbours (counts add, the later allocation is kept), so resolution
halves for old data while totals stay exact; at most ``MAX_ALARMS_KEPT`` alarms per
placement. In memory a series is arrays (:class:`Series`), not the lines' dicts. The file is
rewritten from memory (temporary file, fsync, rename) when it holds twice the lines kept.
**Never in the way**: ticks run on their own thread; reads copy arrays under a lock held only
for that copy, and neither takes a lock of decisions or ingest (a tick takes each variant's
learn lock while it reads its window and allocation, as ``GET …/allocation`` does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray

from bandit import ALL_SEGMENTS, EventBatch
from bandit.drift import ChangeAlarm

log = logging.getLogger("adbandit.serving")

__all__ = ["HistoryRecorder", "Series", "WindowTally"]

#: Segments one variant's window tallies on their own; outcomes of others count at ``*`` only.
WINDOW_SEGMENTS = 256
#: Change alarms kept per placement.
MAX_ALARMS_KEPT = 500
#: Points the file may hold per point kept before it is rewritten.
REWRITE_FACTOR = 2
#: Fields of a variant's experiment figures in a point (``x``), in order.
EXPERIMENT_FIELDS = ("requests", "lift", "ci_low", "ci_high", "p_value_always_valid")


def request_rewards_of(
    batch: EventBatch, request: NDArray[np.float64] | None, joined: NDArray[np.float64] | None = None
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Which rows [n] of ``batch`` start a request, and the revenue [n] each row adds to its
    request: every event is a request earning its revenue when it filled, or, with ``request``
    [n] (the revenue of the request each row starts, NaN on the further rows of a waterfall or
    auction outcome and on a later notice of a plan decision,
    :func:`serving.applier.request_rewards`), one request per decision; ``joined`` [n] (NaN
    except on a later notice) adds its revenue to the request its decision's first notice
    started. Rows that neither start nor join add 0."""
    if request is None:
        starts, reward = np.ones(len(batch), dtype=bool), np.where(batch.filled, batch.revenue_cpm, 0.0)
    else:
        starts = np.isfinite(request)
        reward = np.where(starts, request, 0.0)
    if joined is not None:
        reward = np.where(np.isfinite(joined) & ~starts, joined, reward)
    return starts, reward


class WindowTally:
    """Outcome events of one variant since the last :meth:`take`: requests, fills, revenue
    (sum of CPM), per segment (the first ``WINDOW_SEGMENTS`` of the window) and in total, and
    the newest event time. Not thread-safe: used under the variant's learn lock."""

    __slots__ = ("last_ts", "segments", "total")

    def __init__(self) -> None:
        self.segments: dict[str, np.ndarray] = {}
        self.total = np.zeros(3)
        self.last_ts: float | None = None

    def add(
        self, batch: EventBatch, request: NDArray[np.float64] | None = None, joined: NDArray[np.float64] | None = None
    ) -> None:
        """Tally ``batch``: every event a request, or, with ``request`` [n] (the revenue of the
        request each row starts, NaN on the further rows of a waterfall or auction outcome,
        :meth:`serving.live.VariantSlot.add_outcomes`), one request per decision, filled when
        it earned something or its first row filled; a later notice of a plan decision
        (``joined`` [n]) adds its revenue and, when it paid, a fill to this window (its request
        was counted in the window of the decision's first notice)."""
        if not len(batch):
            return
        starts, reward = request_rewards_of(batch, request, joined)
        count = starts.astype(np.float64)
        filled = ((reward > 0) | (starts & batch.filled)).astype(np.float64)
        k = len(batch.segments)
        sums = np.stack(
            [
                np.bincount(batch.segment_index, weights=count, minlength=k),
                np.bincount(batch.segment_index, weights=filled, minlength=k),
                np.bincount(batch.segment_index, weights=reward, minlength=k),
            ],
            axis=1,
        )  # [k, 3]
        self.total += sums.sum(axis=0)
        for i, segment in enumerate(batch.segments):
            if not sums[i].any() or segment == ALL_SEGMENTS:
                continue
            have = self.segments.get(segment)
            if have is not None:
                have += sums[i]
            elif len(self.segments) < WINDOW_SEGMENTS:
                self.segments[segment] = sums[i].copy()
        newest = float(batch.ts.max())
        self.last_ts = newest if self.last_ts is None else max(self.last_ts, newest)

    def take(self) -> WindowTally:
        """This window's tallies; this one starts a new window."""
        taken = WindowTally()
        taken.segments, taken.total, taken.last_ts = self.segments, self.total, self.last_ts
        self.segments, self.total, self.last_ts = {}, np.zeros(3), None
        return taken

    def merge(self, other: WindowTally) -> None:
        self.total += other.total
        for segment, sums in other.segments.items():
            have = self.segments.get(segment)
            if have is not None:
                have += sums
            else:
                self.segments[segment] = sums.copy()
        if other.last_ts is not None:
            self.last_ts = other.last_ts if self.last_ts is None else max(self.last_ts, other.last_ts)


#: Columns of a series: time, requests, fills, revenue, newest event time (NaN: none).
T, REQ, FILL, REV, LAST = range(5)


class Series:
    """The points of one (placement, segment) series as arrays: ``cols`` [n, 5] (:data:`T` …
    :data:`LAST`) and ``alloc`` [n, networks, 2] (weight, floor; NaN where a network was not
    in the placement), ``networks`` naming the second axis (it grows when a placement gains
    one); ``exp`` [n, variants, len(EXPERIMENT_FIELDS)] the experiment's figures per variant
    (NaN: none then), ``variants`` naming its second axis. About 8·(5 + 2·networks + 5·variants)
    bytes a point: a day at 30 s of three networks is 250 KB."""

    __slots__ = ("alloc", "capacity", "cols", "exp", "n", "networks", "variants")

    def __init__(self, capacity: int) -> None:
        self.n = 0
        self.capacity = int(capacity)
        self.cols = np.empty((min(64, self.capacity), 5))  # grows by doubling up to capacity
        self.alloc = np.empty((len(self.cols), 0, 2))
        self.networks: list[str] = []
        self.exp = np.empty((len(self.cols), 0, len(EXPERIMENT_FIELDS)))
        self.variants: list[str] = []

    def __len__(self) -> int:
        return self.n

    def append(
        self,
        t: float,
        req: float,
        fill: float,
        rev: float,
        last: float | None,
        allocation: dict,
        experiment: Mapping[str, Sequence[float | None]] | None = None,
    ) -> None:
        """Add a point (``allocation``: network → [weight, floor]; ``experiment``: variant → its
        :data:`EXPERIMENT_FIELDS`; ``None`` for a non-finite value)."""
        experiment = experiment or {}
        new = [name for name in allocation if name not in self.networks]
        if new:
            grown = np.full((len(self.alloc), len(self.networks) + len(new), 2), np.nan)
            grown[:, : len(self.networks)] = self.alloc
            self.alloc, self.networks = grown, [*self.networks, *new]
        new = [name for name in experiment if name not in self.variants]
        if new:
            grown = np.full((len(self.exp), len(self.variants) + len(new), len(EXPERIMENT_FIELDS)), np.nan)
            grown[:, : len(self.variants)] = self.exp
            self.exp, self.variants = grown, [*self.variants, *new]
        if self.n == len(self.cols) < self.capacity:
            size = min(2 * self.n, self.capacity)
            self.cols = np.concatenate([self.cols, np.empty((size - self.n, 5))])
            self.alloc = np.concatenate([self.alloc, np.empty((size - self.n, *self.alloc.shape[1:]))])
            self.exp = np.concatenate([self.exp, np.empty((size - self.n, *self.exp.shape[1:]))])
        if self.n == self.capacity:
            self.thin()
        i = self.n
        self.cols[i] = (t, req, fill, rev, np.nan if last is None else last)
        self.alloc[i] = np.nan
        for name, (w, f) in allocation.items():
            self.alloc[i, self.networks.index(name)] = (np.nan if w is None else w, np.nan if f is None else f)
        self.exp[i] = np.nan
        for name, values in experiment.items():
            self.exp[i, self.variants.index(name)] = [np.nan if v is None else v for v in values]
        self.n += 1

    def thin(self) -> None:
        """Merge the older half's neighbours pairwise: counts and revenue add, the later point's
        time, newest event time, allocation and experiment figures (cumulative) are kept.
        Resolution halves there; no event is lost."""
        half = self.n // 2
        pairs = half // 2
        a, b = self.cols[0 : 2 * pairs : 2], self.cols[1 : 2 * pairs : 2]
        merged = b.copy()
        merged[:, REQ : REV + 1] += a[:, REQ : REV + 1]
        keep = slice(2 * pairs, self.n)  # an odd one out of the older half stays as it is
        cols = np.concatenate([merged, self.cols[keep]])
        alloc = np.concatenate([self.alloc[1 : 2 * pairs : 2], self.alloc[keep]])
        exp = np.concatenate([self.exp[1 : 2 * pairs : 2], self.exp[keep]])
        self.n = len(cols)
        self.cols[: self.n], self.alloc[: self.n], self.exp[: self.n] = cols, alloc, exp

    def after(self, since: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the rows (cols, alloc, exp) later than ``since`` (all with ``None``)."""
        rows = (
            slice(0, self.n)
            if since is None
            else slice(int(np.searchsorted(self.cols[: self.n, T], since, "right")), self.n)
        )
        return self.cols[rows].copy(), self.alloc[rows].copy(), self.exp[rows].copy()

    def lines(self, placement_id: str, segment: str) -> list[dict]:
        """The points as the file's JSON lines."""
        return [
            _line(placement_id, segment, row, alloc, self.networks, exp, self.variants)
            for row, alloc, exp in zip(
                self.cols[: self.n].tolist(), self.alloc[: self.n].tolist(), self.exp[: self.n].tolist(), strict=True
            )
        ]


@dataclass
class _Placement:
    """What is kept of one placement: its series (per segment) and alarms."""

    series: dict[str, Series] = field(default_factory=dict)
    alarms: list[dict] = field(default_factory=list)
    last_event_ts: float | None = None
    lines: int = 0  # lines in its file


class HistoryRecorder:
    """The history of every placement, in memory and in ``directory`` (module docstring)."""

    def __init__(self, directory: str | os.PathLike, *, max_points: int = 2880, max_segments: int = 16) -> None:
        if max_points < 4 or max_segments < 0:
            raise ValueError("max_points must be >= 4 and max_segments >= 0")
        self.directory = Path(directory)
        self.max_points = int(max_points)
        self.max_segments = int(max_segments)
        self._lock = threading.Lock()
        self._placements: dict[str, _Placement] = {}
        #: Lines skipped at load (torn or unreadable), per placement file.
        self.skipped_lines = 0

    # ------------------------------------------------------------------ files
    def _path(self, placement: str) -> Path:
        return self.directory / f"{quote(placement, safe='')}.ndjson"

    def load(self) -> None:
        """Read every placement's file (skipping torn or unreadable lines, then rewriting a
        file that had any, so appends never follow a torn line)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.ndjson")):
            kept, placement_id, bad, raw = _Placement(), None, 0, b"\n"
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        line = json.loads(raw)
                        if not isinstance(line["p"], str):
                            raise TypeError("p")
                        placement_id = placement_id or line["p"]
                        if "alarm" in line:
                            self._add_alarm(kept, line)
                        else:
                            self._add_point(kept, line)
                    except (ValueError, KeyError, TypeError):
                        bad += 1
                        continue
                    kept.lines += 1
            if placement_id is None:
                continue
            self._placements[placement_id] = kept
            if bad or not raw.endswith(b"\n"):
                self.skipped_lines += bad
                log.warning("history of %s: %d unreadable lines skipped", placement_id, bad)
                try:
                    self._rewrite(placement_id, kept)
                except OSError as exc:  # appends may follow the torn line; the next load skips it again
                    log.error("history of %s not rewritten: %s", placement_id, exc)

    def _rewrite(self, placement_id: str, kept: _Placement) -> None:
        path = self._path(placement_id)
        lines = [
            *kept.alarms,
            *(line for seg, series in kept.series.items() for line in series.lines(placement_id, seg)),
        ]
        lines.sort(key=lambda line: line["t"])
        tmp = path.with_suffix(".ndjson.tmp")
        with open(tmp, "wb") as f:
            f.writelines(_encode(line) for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        kept.lines = len(lines)

    def _append(self, placement_id: str, kept: _Placement, lines: list[dict]) -> None:
        with open(self._path(placement_id), "ab") as f:
            f.writelines(_encode(line) for line in lines)
        kept.lines += len(lines)
        held = len(kept.alarms) + sum(len(series) for series in kept.series.values())
        if kept.lines > REWRITE_FACTOR * held + 64:
            self._rewrite(placement_id, kept)

    # ------------------------------------------------------------------ memory
    def _add_point(self, kept: _Placement, point: dict) -> None:
        for key in ("t", "req", "fill", "rev"):
            if not isinstance(point[key], (int, float)) or not math.isfinite(point[key]):
                raise ValueError(key)
        if not isinstance(point["n"], dict) or not isinstance(point["s"], str):
            raise TypeError("n")
        last = point.get("last")
        if last is not None and not (isinstance(last, (int, float)) and math.isfinite(last)):
            raise ValueError("last")
        allocation = {str(k): v for k, v in point["n"].items()}
        for v in allocation.values():
            if not (isinstance(v, list) and len(v) == 2 and all(x is None or isinstance(x, (int, float)) for x in v)):
                raise ValueError("n")
        experiment = point.get("x") or {}  # lines written before experiments were kept have none
        if not isinstance(experiment, dict):
            raise TypeError("x")
        for v in experiment.values():
            if not (
                isinstance(v, list)
                and len(v) == len(EXPERIMENT_FIELDS)
                and all(x is None or (isinstance(x, (int, float)) and math.isfinite(x)) for x in v)
            ):
                raise ValueError("x")
        series = kept.series.get(point["s"])
        if series is None:
            tracked = sum(s != ALL_SEGMENTS for s in kept.series)
            if point["s"] != ALL_SEGMENTS and tracked >= self.max_segments:
                return
            series = kept.series[point["s"]] = Series(self.max_points)
        series.append(point["t"], point["req"], point["fill"], point["rev"], last, allocation, experiment)
        if last is not None:
            kept.last_event_ts = max(kept.last_event_ts or -math.inf, float(point["last"]))

    def _add_alarm(self, kept: _Placement, line: dict) -> None:
        alarm = line["alarm"]
        if not isinstance(alarm, dict) or set(alarm) != {"ts", "segment", "network", "relative"}:
            raise TypeError("alarm")
        numbers = (line["t"], alarm["ts"], alarm["relative"])
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
            raise ValueError("alarm")
        if not (isinstance(alarm["segment"], str) and isinstance(alarm["network"], str)):
            raise TypeError("alarm")
        kept.alarms.append(line)
        del kept.alarms[:-MAX_ALARMS_KEPT]

    # ------------------------------------------------------------------ record
    def record(
        self,
        now: float,
        placement_id: str,
        window: WindowTally,
        alarms: Iterable[ChangeAlarm],
        allocations: Mapping[str, Mapping[str, tuple[float, float]]],
        experiment: Mapping[str, Sequence[float | None]] | None = None,
    ) -> None:
        """Append one point per series of ``placement_id`` at time ``now``: the whole placement
        and each tracked segment, with ``window``'s counts and ``allocations[segment]`` (network
        → (weight, floor)); new segments of the window are tracked while there is room
        (:meth:`segments_to_record` says which, before the allocations are read). ``experiment``
        (variant → its :data:`EXPERIMENT_FIELDS`) goes with the whole placement's point."""
        with self._lock:
            kept = self._placements.setdefault(placement_id, _Placement())
        lines: list[dict] = []
        for alarm in alarms:
            lines.append({"t": now, "p": placement_id, "alarm": alarm.to_dict()})
        for segment, networks in allocations.items():
            sums = window.total if segment == ALL_SEGMENTS else window.segments.get(segment, np.zeros(3))
            point = {
                "t": now,
                "p": placement_id,
                "s": segment,
                "req": int(np.rint(sums[0])),
                "fill": int(np.rint(sums[1])),
                "rev": float(sums[2]),
                "last": window.last_ts if window.last_ts is not None else kept.last_event_ts,
                "n": {name: [_finite(w), _finite(f)] for name, (w, f) in networks.items()},
            }
            if experiment and segment == ALL_SEGMENTS:
                point["x"] = {name: [_finite_or_none(v) for v in values] for name, values in experiment.items()}
            lines.append(point)
        with self._lock:
            for line in lines:
                if "alarm" in line:
                    self._add_alarm(kept, line)
                else:
                    self._add_point(kept, line)
        try:
            self._append(placement_id, kept, lines)
        except OSError as exc:  # the console loses a point; decisions and ingest are not concerned
            log.error("history of %s not written: %s", placement_id, exc)

    def segments_to_record(self, placement_id: str, window: WindowTally) -> list[str]:
        """``*``, the segments tracked so far, then new ones of ``window`` (most requests first)
        while fewer than ``max_segments`` are tracked."""
        with self._lock:
            kept = self._placements.get(placement_id)
            tracked = [s for s in (kept.series if kept else ()) if s != ALL_SEGMENTS]
        room = self.max_segments - len(tracked)
        new = [s for s in window.segments if s not in tracked]
        new.sort(key=lambda s: -window.segments[s][0])
        return [ALL_SEGMENTS, *tracked, *new[: max(room, 0)]]

    # ------------------------------------------------------------------ read
    def segments(self, placement_id: str) -> list[str]:
        with self._lock:
            kept = self._placements.get(placement_id)
            return sorted(kept.series, key=lambda s: (s != ALL_SEGMENTS, s)) if kept else []

    def read(self, placement_id: str, segment: str = ALL_SEGMENTS, since: float | None = None) -> dict[str, Any]:
        """The points of one series and the placement's alarms, after ``since`` (epoch seconds),
        in the HTTP shape of ``GET /v1/placements/{p}/history``."""
        with self._lock:
            kept = self._placements.get(placement_id)
            series = kept.series.get(segment) if kept else None
            if series is not None:
                cols, alloc, exp = series.after(since)
            else:
                cols, alloc, exp = np.empty((0, 5)), np.empty((0, 0, 2)), np.empty((0, 0, len(EXPERIMENT_FIELDS)))
            networks = list(series.networks) if series is not None else []
            variants = list(series.variants) if series is not None else []
            alarms = list(kept.alarms) if kept else []
            last = kept.last_event_ts if kept else None
        if since is not None:
            alarms = [a for a in alarms if a["t"] > since]
        return {
            "points": [
                _point_out(row, a, networks, x, variants)
                for row, a, x in zip(cols.tolist(), alloc.tolist(), exp.tolist(), strict=True)
            ],
            "networks": networks,
            "alarms": [{"t": a["t"], **a["alarm"]} for a in alarms],
            "last_event_ts": last,
        }


def _point_out(
    row: list[float], alloc: list[list[float]], networks: list[str], exp: list[list[float]], variants: list[str]
) -> dict[str, Any]:
    req, fill, rev = int(row[REQ]), int(row[FILL]), row[REV]
    out = {
        "t": row[T],
        "requests": req,
        "fills": fill,
        "revenue": rev,
        "revenue_per_request": rev / req if req else None,
        "fill_rate": fill / req if req else None,
        "networks": {
            name: {"weight": _finite(w), "floor_cpm": _finite(f)}
            for name, (w, f) in zip(networks, alloc, strict=True)
            if not (math.isnan(w) and math.isnan(f))  # not in the placement then
        },
    }
    experiment = _experiment(exp, variants)
    if experiment:  # only while an experiment ran (the key is absent otherwise, as before)
        out["experiment"] = {
            name: {**dict(zip(EXPERIMENT_FIELDS, values, strict=True)), "requests": int(values[0] or 0)}
            for name, values in experiment.items()
        }
    return out


def _experiment(exp: list[list[float]], variants: list[str]) -> dict[str, list[float | None]]:
    """Variant → its figures (``None`` for NaN), for the variants with any figure at this point."""
    return {
        name: [_finite_or_none(v) for v in values]
        for name, values in zip(variants, exp, strict=True)
        if not all(math.isnan(v) for v in values)
    }


def _line(
    placement_id: str,
    segment: str,
    row: list[float],
    alloc: list[list[float]],
    networks: list[str],
    exp: list[list[float]] | None = None,
    variants: list[str] | None = None,
) -> dict:
    experiment = _experiment(exp or [], variants or [])
    return {
        "t": row[T],
        "p": placement_id,
        "s": segment,
        "req": int(row[REQ]),
        "fill": int(row[FILL]),
        "rev": row[REV],
        "last": _finite(row[LAST]),
        "n": {
            name: [_finite(w), _finite(f)]
            for name, (w, f) in zip(networks, alloc, strict=True)
            if not (math.isnan(w) and math.isnan(f))
        },
        **({"x": experiment} if experiment else {}),
    }


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None else _finite(x)


def _encode(line: dict) -> bytes:
    return (json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n").encode()
