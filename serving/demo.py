"""The demo placement of ``adbandit serve --demo``: something live to try in ``/docs``.

Only when the state dir holds no placement: creates the placement of a
:class:`~serving.sources.DemoSource` (the command line injects the simulator's
:class:`simulator.demo.MarketDemo`: placement ``demo``, networks ``admob``, ``adfit`` and
``house``, segments by ``country`` and ``os``) and runs the real loop a few times — the
live policy decides a batch of requests, the source's market answers them, the outcomes
are ingested — so its allocation, Prebid floors and experiment report show learned
numbers at once. Event times end now, so the demo's learning is current.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from serving.sources import DemoSource

log = logging.getLogger("adbandit.serving")

DEMO_EVENTS = 3000
DEMO_ROUNDS = 3


def install_demo(store, source: DemoSource, n: int = DEMO_EVENTS, rounds: int = DEMO_ROUNDS) -> bool:
    """Create and feed the demo placement if the store (a ``PolicyStore``) has no placement at all."""
    if store.list_placements():
        return False
    placement = source.placement()
    store.put_placement(placement)

    def live(requests: Sequence[tuple[str, dict]]) -> list[tuple[str, float, str | None]]:
        return [(d.network, d.floor_cpm, d.decision_id) for d in store.decide_batch(placement.id, requests)]

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
