"""The service's logs on stderr: readable text on a terminal, JSON lines otherwise.

Every record may carry ``extra={"fields": {...}}``; both formats show them. Timestamps are
ISO-8601 in UTC with milliseconds (``2026-12-02T08:30:00.123Z``).

* text: ``2026-12-02T08:30:00.123Z INFO  adbandit.serving: store open state_dir=state placements=1``
* json: ``{"ts": "2026-12-02T08:30:00.123Z", "level": "info", "logger": "adbandit.serving",
  "msg": "store open", "state_dir": "state", "placements": 1}``
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["auto", "text", "json"]

#: Loggers of the service: ours, the store's (``serving.store`` …) and uvicorn's.
SERVICE_LOGGERS = ("adbandit", "serving", "bandit", "experiments", "uvicorn")


def iso_time(created: float) -> str:
    """``created`` (seconds since the epoch) as ISO-8601 UTC with milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601), level, logger, msg, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``<ISO time> <LEVEL> <logger>: <message> key=value ...`` (and a traceback below, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        line = f"{iso_time(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text


def resolve_format(fmt: LogFormat, stream: Any = None) -> Literal["text", "json"]:
    """``auto`` is text when ``stream`` (default stderr) is a terminal, else JSON."""
    if fmt != "auto":
        return fmt
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Send the service's logs to stderr at ``level`` in ``fmt`` (idempotent: replaces the
    handler this function installed before)."""
    formatter = TextFormatter() if resolve_format(fmt) == "text" else JsonFormatter()
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        for h in [h for h in logger.handlers if getattr(h, "_adbandit", False)]:
            logger.removeHandler(h)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        handler._adbandit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
