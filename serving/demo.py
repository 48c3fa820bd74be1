"""The demo placement of ``adbandit serve --demo``: something live to try in ``/docs``.

Only when the state dir holds no placement: creates placement ``demo`` from the
simulator scenario of that name (networks ``admob``, ``adfit`` and ``house``, segments by
``country`` and ``os``) and runs the real loop a few times — the live policy decides a
batch of requests, the simulator's market answers them, the outcomes are ingested —
so its allocation, Prebid floors and experiment report show learned numbers at once.
Event times are shifted to end now, so the demo's learning is current.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from bandit import PlacementConfig
from simulator.market import Market
from simulator.runner import RequestStream
from simulator.scenario import load_scenario

log = logging.getLogger("adbandit.serving")

DEMO_PLACEMENT = "demo"
DEMO_EVENTS = 3000
DEMO_ROUNDS = 3

#: Decides requests given (request_id, context) pairs: one (network, floor_cpm, decision_id) each.
Decider = Callable[[Sequence[tuple[str, dict]]], list[tuple[str, float, str | None]]]


def demo_market() -> Market:
    return Market(load_scenario(DEMO_PLACEMENT))


def demo_placement() -> PlacementConfig:
    return demo_market().placement


def _random_decider(placement: PlacementConfig, rng: np.random.Generator) -> Decider:
    """Uniformly random networks and floors within their bounds (an exploration log)."""

    def decide(requests: Sequence[tuple[str, dict]]) -> list[tuple[str, float, str | None]]:
        out = []
        for _ in requests:
            net = placement.networks[int(rng.integers(len(placement.networks)))]
            out.append((net.id, round(float(rng.uniform(net.floor_min_cpm, min(net.floor_max_cpm, 4.0))), 2), None))
        return out

    return decide


def demo_events(
    n: int = DEMO_EVENTS, seed: int = 7, ts: float | None = None, decide: Decider | None = None, start: int = 0
) -> list[dict]:
    """``n`` outcome events (HTTP-contract dicts) from the demo market, for decisions made by
    ``decide`` (default: random networks and floors). Times end at ``ts`` (default now)."""
    market = demo_market()
    placement = market.placement
    rng = np.random.default_rng(seed)
    req = RequestStream(market, rng).take(n)
    contexts = [dict(zip(placement.segment_by, req.segments[s].split("|"), strict=True)) for s in req.segment_index]
    ids = [f"demo-{start + i}" for i in range(n)]
    chosen = (decide or _random_decider(placement, rng))(list(zip(ids, contexts, strict=True)))
    network = np.array([placement.network_index(c[0]) for c in chosen], dtype=np.int64)
    floor = np.array([c[1] for c in chosen])
    filled, revenue = market.outcomes(req, network, floor)
    shift = (time.time() if ts is None else ts) - float(req.ts[-1])
    return [
        {
            "event_id": ids[i],
            **({"decision_id": chosen[i][2]} if chosen[i][2] else {}),
            "ts": float(req.ts[i]) + shift,
            "placement": DEMO_PLACEMENT,
            "network": chosen[i][0],
            "floor_cpm": float(floor[i]),
            "filled": bool(filled[i]),
            "revenue_cpm": round(float(revenue[i]), 4) if filled[i] else 0.0,
            "context": contexts[i],
        }
        for i in range(n)
    ]


def install_demo(store, n: int = DEMO_EVENTS, rounds: int = DEMO_ROUNDS) -> bool:  # store: PolicyStore
    """Create and feed the demo placement if the store has no placement at all."""
    if store.list_placements():
        return False
    store.put_placement(demo_placement())

    def live(requests: Sequence[tuple[str, dict]]) -> list[tuple[str, float, str | None]]:
        return [(d.network, d.floor_cpm, d.decision_id) for d in store.decide_batch(DEMO_PLACEMENT, requests)]

    accepted = 0
    per_round = n // rounds
    now = time.time()
    for r in range(rounds):
        ts = now - (rounds - 1 - r) * 60.0
        events = demo_events(per_round, seed=7 + r, ts=ts, decide=live, start=r * per_round)
        accepted += store.ingest(events).accepted
        store.flush()  # the next round decides with what this one taught
    log.info("demo placement created", extra={"fields": {"placement": DEMO_PLACEMENT, "events": accepted}})
    return True
