"""Fault injection for tests of the real server process (off unless asked for).

When the environment variable ``ADBANDIT_FAULT_FILE`` names a file when the process starts,
every event-log write and fsync and every snapshot write first reads that file. Each line
``<operation> <errno name>`` (operation: ``write``, ``write-partial``, ``fsync`` or
``snapshot``; errno e.g. ``ENOSPC`` or ``EIO``) makes that operation fail with that error
(``write-partial`` writes half of the bytes first, as a disk that fills up mid-record
does). An empty or absent file injects nothing, so a test turns "disk full" on and off by
rewriting the file. Without the variable the checks cost one attribute read.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

ENV = "ADBANDIT_FAULT_FILE"
_path = Path(os.environ[ENV]) if os.environ.get(ENV) else None


def enabled() -> bool:
    return _path is not None


def injected(operation: str) -> int | None:
    """The errno to fail ``operation`` with now, or ``None``."""
    if _path is None:
        return None
    try:
        lines = _path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] == operation:
            return getattr(errno, parts[1], errno.EIO)
    return None


def check(operation: str) -> None:
    """Raise the injected ``OSError`` for ``operation``, if any."""
    code = injected(operation)
    if code is not None:
        raise OSError(code, f"{os.strerror(code)} (injected)")
