"""Quarantine: damaged bytes moved out of the state, and the ledger of what they cost.

When recovery finds bytes that hold no valid record (a torn tail, a damaged record in the
middle of a log segment, an unreadable snapshot) it moves them here before it cuts them
out, and writes one :class:`Damage` entry to ``damage.json`` saying which file, which byte
offset, which log sequence numbers and how many outcome events were lost. The ledger is
what makes the state "degraded" (until an operator acknowledges it) and lets a later
recovery recognise a gap it already reported instead of reporting it again.

Layout: ``<dir>/damage.json`` (a JSON list, replaced atomically) and one
``<file>@<offset>-lsn<first lost lsn>.bad`` per quarantined byte range (the lsn keeps names
unique when later damage lands at the same offset of a segment already cut).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

log = logging.getLogger(__name__)

LEDGER = "damage.json"
#: Damage kinds. ``torn``: an incomplete last record after a crash (never acknowledged;
#: cut, logged, not an error). ``stray``: bytes between two consecutive records (an
#: unacknowledged partial write; nothing lost). ``damaged``: bytes where acknowledged
#: records were. ``missing``: records absent without any bytes left of them.
#: ``snapshot``: an unreadable snapshot (the log still holds what it covered).
KINDS = ("torn", "stray", "damaged", "missing", "snapshot")
#: Kinds that make the state degraded until acknowledged.
ERROR_KINDS = frozenset({"damaged", "missing", "snapshot"})


@dataclass(frozen=True)
class Damage:
    """One damaged byte range (or gap) of one file, and what it cost.

    ``first_lost_lsn``..``last_lost_lsn`` are the log records lost (``None`` when none or
    unknown); ``records_lost``/``events_lost`` are ``None`` when they cannot be counted
    (then ``bytes`` is what is known). Events of records the loaded snapshot covers were
    learned before the damage and are not counted as lost.
    """

    id: str
    kind: str
    file: str
    offset: int
    bytes: int
    first_lost_lsn: int | None
    last_lost_lsn: int | None
    records_lost: int | None
    events_lost: int | None
    covered_lsn: int
    detail: str
    quarantined: str | None = None
    detected: float = 0.0
    acknowledged: float | None = None

    @property
    def is_error(self) -> bool:
        return self.kind in ERROR_KINDS

    def message(self) -> str:
        """One line for the service log and ``store verify``."""
        lost = "unknown" if self.records_lost is None else str(self.records_lost)
        events = "unknown" if self.events_lost is None else str(self.events_lost)
        span = "" if self.first_lost_lsn is None else f" (lsn {self.first_lost_lsn}..{self.last_lost_lsn})"
        return (
            f"{self.kind} at {self.file} offset {self.offset}: {self.bytes} bytes, "
            f"{lost} records lost{span}, {events} events lost; {self.detail}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict) -> Damage:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})


class Quarantine:
    """The quarantine directory (see the module docstring); created on first use."""

    def __init__(self, directory: str | os.PathLike, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = bool(fsync)
        self._cache: list[Damage] | None = None  # this process is the ledger's only writer

    # ------------------------------------------------------------------ writing
    def keep(self, name: str, data: bytes | memoryview) -> str:
        """Store ``data`` as ``name`` (atomically, durably); returns the file name."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write(self.directory / name, bytes(data))
        return name

    def move(self, path: Path, name: str) -> str:
        """Move a whole file (e.g. an unreadable snapshot) here as ``name``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.replace(path, self.directory / name)
        self._sync_dir(self.directory)
        self._sync_dir(path.parent)
        return name

    def record(self, damage: Damage) -> Damage:
        """Add ``damage`` to the ledger (an entry with the same id is replaced, keeping its
        detection time and acknowledgement); returns the entry as stored."""
        entries = {d.id: d for d in self.entries()}
        old = entries.get(damage.id)
        if old is not None:
            damage = replace(damage, detected=old.detected, acknowledged=old.acknowledged)
        elif not damage.detected:
            damage = replace(damage, detected=time.time())
        if not damage.is_error and damage.acknowledged is None:
            damage = replace(damage, acknowledged=damage.detected)  # nothing to acknowledge
        entries[damage.id] = damage
        self._save(list(entries.values()))
        return damage

    def acknowledge(self, now: float | None = None) -> list[Damage]:
        """Mark every unacknowledged entry acknowledged; returns those entries."""
        now = time.time() if now is None else float(now)
        entries = self.entries()
        done = [replace(d, acknowledged=now) for d in entries if d.acknowledged is None]
        if done:
            by_id = {d.id: d for d in done}
            self._save([by_id.get(d.id, d) for d in entries])
        return done

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[Damage]:
        if self._cache is None:
            self._cache = self._load()
        return list(self._cache)

    def _load(self) -> list[Damage]:
        path = self.directory / LEDGER
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("quarantine ledger %s is unreadable (%s); starting a new one", path, exc)
            return []
        return [Damage.from_dict(d) for d in body if isinstance(d, dict)]

    def unacknowledged(self) -> list[Damage]:
        """Errors not yet acknowledged by an operator (they make the state degraded)."""
        return [d for d in self.entries() if d.is_error and d.acknowledged is None]

    def lost_ranges(self) -> list[tuple[int, int]]:
        """Log sequence numbers already reported lost, as inclusive ranges."""
        return [
            (d.first_lost_lsn, d.last_lost_lsn)
            for d in self.entries()
            if d.first_lost_lsn is not None and d.last_lost_lsn is not None
        ]

    # ----------------------------------------------------------------- internals
    def _save(self, entries: list[Damage]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps([d.to_dict() for d in entries], indent=1).encode()
        self._write(self.directory / LEDGER, data)
        self._cache = list(entries)

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir(path.parent)

    def _sync_dir(self, directory: Path) -> None:
        if self.fsync:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
