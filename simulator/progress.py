"""Progress of long offline commands: a bar on a terminal, periodic log lines otherwise.

``simulate``, ``ab``, ``tune`` and ``relearn`` count their steps (runs, trials, partials) through
one :class:`Progress`. When its stream (stderr) is a terminal it draws a tqdm bar; otherwise
(a CI log, ``2> file``, a pipe) it writes a line at most every ``every_s`` seconds of wall
time or every ``every_share`` of the total, whichever comes first, and one at the end::

    simulate: 12/40 runs done, 1m20s elapsed, ~3m07s left

The time left is the elapsed time scaled by the steps still to do (steps of a run take about
the same time); it is left out while nothing is done or when the total is unknown.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``seconds`` as ``7s``, ``1m20s`` or ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts ``total`` steps (None: unknown) of the command ``label``; see the module docstring.

    ``enabled=False`` shows nothing. ``bar`` forces the tqdm bar (True) or the log lines
    (False); by default it is whether ``stream`` is a terminal. ``clock`` returns seconds
    (tests pass a fake one). Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "runs",
        enabled: bool = True,
        stream: TextIO | None = None,
        bar: bool | None = None,
        every_s: float = 10.0,
        every_share: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.every_s, self.every_share = every_s, every_share
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = self._last_time = clock()
        self._last_done = 0
        self._closed = not enabled
        self._bar: Any = None
        self._lines = False
        if enabled:
            isatty = getattr(self._stream, "isatty", None)
            if bar if bar is not None else bool(isatty is not None and isatty()):
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, unit=unit.rstrip("s") or unit, desc=label, file=self._stream)
            else:
                self._lines = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        if self._closed:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        share_step = self.total is not None and self.done - self._last_done >= self.every_share * self.total
        if now - self._last_time >= self.every_s or share_step:
            self._write(now)

    def close(self) -> None:
        """Closes the bar, or writes the last line (unless the last update already did)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.done != self._last_done or self.done == 0:
            self._write(self._clock())

    def line(self, now: float) -> str:
        """The progress line at time ``now``."""
        elapsed = now - self._start
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.label}: {self.done}{of} {self.unit} done, {format_duration(elapsed)} elapsed"
        if self.total is not None and 0 < self.done < self.total:
            text += f", ~{format_duration(elapsed * (self.total - self.done) / self.done)} left"
        return text

    def _write(self, now: float) -> None:
        self._last_time, self._last_done = now, self.done
        print(self.line(now), file=self._stream, flush=True)
