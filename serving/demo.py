"""The demo placement of ``adbandit serve --demo``: something live to try in ``/docs``.

Only when the state dir holds no placement: creates the placement of a
:class:`~serving.sources.DemoSource` (the command line injects the simulator's
:class:`simulator.demo.MarketDemo`: placement ``demo``, networks ``admob``, ``adfit`` and
``house``, segments by ``country`` and ``os``) and runs the real loop a few times — the
live policy decides a batch of requests, the source's market answers them, the outcomes
are ingested — so its allocation, Prebid floors and experiment report show learned
numbers at once. Event times end now, so the demo's learning is current.

:class:`DemoFeed` (``serve --demo-feed SECONDS``) keeps the loop going while the service runs:
every ``every_s`` seconds the live policy decides a batch for the demo placement, the market
answers, the outcomes are ingested — live traffic for ``/console`` and the metrics to show.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from bandit.errors import UnknownPlacement
from serving.sources import DemoSource

log = logging.getLogger("adbandit.serving")

DEMO_EVENTS = 3000
DEMO_ROUNDS = 3
#: Events per round of :class:`DemoFeed`.
DEMO_FEED_EVENTS = 200


def _decider(store, placement_id: str):
    def live(requests: Sequence[tuple[str, dict]]) -> list[tuple[str, float, str | None]]:
        return [(d.network, d.floor_cpm, d.decision_id) for d in store.decide_batch(placement_id, requests)]

    return live


def install_demo(store, source: DemoSource, n: int = DEMO_EVENTS, rounds: int = DEMO_ROUNDS) -> bool:
    """Create and feed the demo placement if the store (a ``PolicyStore``) has no placement at all."""
    if store.list_placements():
        return False
    placement = source.placement()
    store.put_placement(placement)
    live = _decider(store, placement.id)

    accepted = 0
    per_round = n // rounds
    now = time.time()
    for r in range(rounds):
        ts = now - (rounds - 1 - r) * 60.0
        events = source.events(per_round, seed=7 + r, ts=ts, decide=live, start=r * per_round)
        accepted += store.ingest(events).accepted
        store.flush()  # the next round decides with what this one taught
    log.info("demo placement created", extra={"fields": {"placement": placement.id, "events": accepted}})
    return True


class DemoFeed:
    """A thread feeding the demo placement ``n`` outcome events every ``every_s`` seconds (module
    docstring) until :meth:`stop`. Event ids carry the start time in microseconds, so a restarted
    feed never repeats one; a round that fails is logged and the next one tried."""

    def __init__(self, store, source: DemoSource, every_s: float, n: int = DEMO_FEED_EVENTS) -> None:
        self.store, self.source, self.every_s, self.n = store, source, float(every_s), int(n)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adbandit-demo-feed", daemon=True)
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        placement_id = self.source.placement().id
        start = time.time_ns() // 1000
        while not self._stop.wait(self.every_s):
            try:
                events = self.source.events(
                    self.n, seed=start % 2**32 + self.rounds, ts=time.time(),
                    decide=_decider(self.store, placement_id), start=start + self.rounds * self.n,
                )  # fmt: skip
                self.store.ingest(events)
                self.rounds += 1
            except UnknownPlacement:
                log.warning("demo feed stopped: placement %r does not exist", placement_id)
                return
            except Exception:  # the service goes on; so does the feed
                log.exception("demo feed round failed")
