"""Reading outcome logs (polars frames, Parquet, NDJSON) and saving policy state.

polars is imported lazily, only by the functions that read frames or files, so the
decision path of :mod:`bandit` needs nothing beyond numpy and scipy.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit.errors import InvalidOutcome, InvalidState, UnknownNetwork
from bandit.events import EventBatch
from bandit.types import ALL_SEGMENTS, MISSING_VALUE, PlacementConfig

REQUIRED_COLUMNS = ("network", "floor_cpm", "filled", "ts")


def read_events(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> Any:
    """Outcome logs from Parquet (``.parquet``) and NDJSON (``.ndjson``/``.jsonl``/``.json``) files
    as one polars frame (columns as in the HTTP contract; ``context`` as a struct)."""
    import polars as pl

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = []
    for p in map(Path, paths):
        if not p.exists():
            raise InvalidOutcome(f"log file {str(p)!r} does not exist")
        if p.suffix == ".parquet":
            frames.append(pl.read_parquet(p))
        elif p.suffix in (".ndjson", ".jsonl", ".json"):
            frames.append(pl.read_ndjson(p, infer_schema_length=None))
        else:
            raise InvalidOutcome(f"log file {str(p)!r}: use .parquet or .ndjson/.jsonl")
    if not frames:
        raise InvalidOutcome("no log files given")
    # Files may write ts as ISO text or as epoch seconds: bring every file to epoch seconds
    # before concatenating, so the column does not fall back to strings.
    frames = [f.with_columns(ts=_epoch_seconds(f["ts"])) if "ts" in f.columns else f for f in frames]
    return pl.concat(frames, how="diagonal_relaxed")


def _epoch_seconds(col: Any) -> Any:
    import polars as pl

    dtype = col.dtype
    if dtype == pl.String:
        col = col.str.to_datetime(time_zone="UTC", strict=False)
        dtype = col.dtype
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("us").cast(pl.Float64) / 1e6
    if dtype.is_numeric():
        return col.cast(pl.Float64)
    raise InvalidOutcome(f"column ts must be a datetime, an ISO 8601 string or epoch seconds, got {dtype}")


def _segment_column(placement: PlacementConfig, df: Any) -> Any:
    import polars as pl

    if "segment" in df.columns:
        return df["segment"].cast(pl.String).fill_null(ALL_SEGMENTS)
    if not placement.segment_by:
        return pl.Series("segment", [ALL_SEGMENTS] * df.height, dtype=pl.String)
    parts = []
    has_context = "context" in df.columns and isinstance(df.schema["context"], pl.Struct)
    ctx_fields = {f.name for f in df.schema["context"].fields} if has_context else set()
    for field in placement.segment_by:
        if field in ctx_fields:
            expr = pl.col("context").struct.field(field)
        elif field in df.columns:
            expr = pl.col(field)
        else:
            expr = pl.lit(None)
        parts.append(
            expr.cast(pl.String).str.replace_all("|", "_", literal=True).replace("", None).fill_null(MISSING_VALUE)
        )
    return df.select(pl.concat_str(parts, separator="|").alias("segment"))["segment"]


def batch_from_frame(placement: PlacementConfig, frame: Any) -> EventBatch:
    """A validated :class:`EventBatch` from a polars DataFrame/LazyFrame or an Arrow table.

    Rows whose ``placement`` column names another placement are skipped; every other
    row must be valid or the whole frame is rejected.
    """
    import polars as pl

    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    elif not isinstance(frame, pl.DataFrame):
        try:
            frame = pl.from_arrow(frame)
        except Exception as exc:
            raise InvalidOutcome(
                f"expected outcome events as a list, a polars frame or an Arrow table: {exc}"
            ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidOutcome(f"outcome frame lacks columns {missing}")
    if "placement" in frame.columns:
        frame = frame.filter(pl.col("placement") == placement.id)
    ids = placement.network_ids
    codes = (
        frame["network"]
        .cast(pl.String)
        .replace_strict({n: i for i, n in enumerate(ids)}, default=-1, return_dtype=pl.Int64)
    )
    if (codes < 0).any():
        bad = frame["network"].filter(codes < 0)[0]
        raise UnknownNetwork(f"network {bad!r} is not configured for placement {placement.id!r}; known: {list(ids)}")
    segment = _segment_column(placement, frame)
    keys = segment.unique(maintain_order=True)
    seg_index = segment.replace_strict(keys, pl.int_range(len(keys), eager=True), return_dtype=pl.Int64)
    revenue = frame["revenue_cpm"] if "revenue_cpm" in frame.columns else pl.Series([0.0] * frame.height)
    for name, col in (("floor_cpm", frame["floor_cpm"]), ("revenue_cpm", revenue)):
        if col.null_count():
            raise InvalidOutcome(f"column {name} has {col.null_count()} missing values")
    filled = frame["filled"]
    if filled.dtype != pl.Boolean or filled.null_count():
        raise InvalidOutcome("column filled must be boolean with no missing values")
    ts = _epoch_seconds(frame["ts"])
    if ts.null_count():
        raise InvalidOutcome("column ts has missing or unparseable times")
    return EventBatch.from_arrays(
        placement,
        segments=tuple(keys.to_list()),
        segment_index=seg_index.to_numpy(),
        network=codes.to_numpy(),
        floor_cpm=frame["floor_cpm"].cast(pl.Float64).to_numpy(),
        filled=filled.to_numpy(),
        revenue_cpm=revenue.cast(pl.Float64).to_numpy(),
        ts=ts.to_numpy(),
    )


def save_state(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    """Write a policy state atomically (temp file, fsync, rename) as an ``.npz`` without pickle."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **state)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path: str | os.PathLike, keep: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Read a state written by :func:`save_state` (pickle disabled). With ``keep``, every
    array is still read (and its checksum checked) but only those named are returned: a
    file checked without holding all of it in memory at once."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            state = {}
            for k in npz.files:
                value = npz[k]  # read whole: zipfile checks the member's CRC
                if keep is None or k in keep:
                    state[k] = value
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidState(f"cannot read policy state {str(path)!r}: {exc}") from None
    if "meta" not in state:
        raise InvalidState(f"{str(path)!r} is not a policy state (no meta)")
    return state


def state_meta(state: Mapping[str, np.ndarray]) -> dict:
    try:
        meta = json.loads(str(state["meta"]))
    except (KeyError, ValueError) as exc:
        raise InvalidState(f"policy state has no readable meta: {exc}") from None
    if not isinstance(meta, dict):
        raise InvalidState("policy state has no readable meta: not a JSON object")
    return meta
