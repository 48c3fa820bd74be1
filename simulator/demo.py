"""The demo market behind ``adbandit serve --demo``: placement ``demo`` and outcomes for its decisions.

:class:`MarketDemo` is the :class:`serving.sources.DemoSource` the command line injects into
the service: the simulator scenario ``demo`` (networks ``admob``, ``adfit`` and ``house``,
segments by ``country`` and ``os``) answers the live policy's decisions with outcome events
in the HTTP contract's shape. :func:`demo_events` also makes test and benchmark traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from bandit import PlacementConfig
from simulator.market import Market
from simulator.runner import RequestStream
from simulator.scenario import load_scenario

DEMO_PLACEMENT = "demo"
DEMO_EVENTS = 3000

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


class MarketDemo:
    """The demo scenario's market as a :class:`serving.sources.DemoSource`."""

    def placement(self) -> PlacementConfig:
        return demo_placement()

    def events(self, n: int, *, seed: int, ts: float, decide: Decider, start: int) -> list[dict]:
        return demo_events(n, seed=seed, ts=ts, decide=decide, start=start)
