"""Progress of long offline commands: log lines when stderr is not a terminal, a bar when it is."""

from __future__ import annotations

import io

import pytest

from simulator.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (7.4, "7s"), (59.6, "1m00s"), (80, "1m20s"), (3599, "59m59s"), (7500, "2h05m")]
)
def test_durations_read_as_a_person_writes_them(seconds, text):
    assert format_duration(seconds) == text


def test_lines_come_every_ten_seconds_or_every_tenth_and_once_at_the_end():
    clock, stream = FakeClock(), io.StringIO()
    with Progress("simulate", 40, stream=stream, clock=clock) as progress:
        for _ in range(3):  # 3 runs in 12 s: under 10% of 40, but 10 s have passed
            clock.now += 4
            progress.update()
        for _ in range(4):  # 4 more runs at once: 10% of the total since the last line
            progress.update()
        clock.now += 5
        progress.update(33)  # the rest: 40/40
    assert stream.getvalue().splitlines() == [
        "simulate: 3/40 runs done, 12s elapsed, ~2m28s left",
        "simulate: 7/40 runs done, 12s elapsed, ~57s left",
        "simulate: 40/40 runs done, 17s elapsed",
    ]


def test_nothing_between_the_steps_that_are_due_and_no_line_repeated_at_close():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("tune", 100, unit="trials", stream=stream, clock=clock)
    for _ in range(9):
        clock.now += 1
        progress.update()
    assert stream.getvalue() == ""  # 9 trials in 9 s: neither 10 s nor 10% yet
    clock.now += 1
    progress.update()
    progress.close()
    progress.close()
    assert stream.getvalue().splitlines() == ["tune: 10/100 trials done, 10s elapsed, ~1m30s left"]


def test_an_unknown_total_counts_without_an_estimate():
    clock, stream = FakeClock(), io.StringIO()
    with Progress("relearn", None, unit="partials", stream=stream, clock=clock) as progress:
        clock.now += 11
        progress.update(3)
    assert stream.getvalue().splitlines() == ["relearn: 3 partials done, 11s elapsed"]


def test_disabled_shows_nothing_and_a_terminal_gets_a_bar_not_lines():
    stream = io.StringIO()
    with Progress("ab", 5, stream=stream, enabled=False) as progress:
        progress.update(5)
    assert stream.getvalue() == ""
    terminal = FakeTerminal()
    with Progress("ab", 5, stream=terminal) as progress:
        progress.update(5)
    assert "5/5" in terminal.getvalue() and "runs done" not in terminal.getvalue()
