"""The demo placement of ``adbandit serve --demo``: something live to try in ``/docs``.

Only when the state dir holds no placement: creates placement ``demo`` (networks
``admob``, ``adfit`` and ``house``, segments by ``country`` and ``os``) and feeds it
:data:`DEMO_EVENTS` synthetic outcome events from a small fixed market (log-normal top
bids per network and segment, second-price ``admob``/``adfit``, first-price ``house``),
so its allocation, Prebid floors and experiment report show learned numbers at once.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from bandit import NetworkConfig, PlacementConfig

log = logging.getLogger("adbandit.serving")

DEMO_PLACEMENT = "demo"
DEMO_EVENTS = 3000
#: (network, auction) → median top bid (CPM) per (country, os) segment, and log-sd.
_MARKET = {
    "admob": ({("KR", "ios"): 2.4, ("KR", "android"): 1.6, ("US", "ios"): 3.5, ("US", "android"): 2.2}, 0.6),
    "adfit": ({("KR", "ios"): 2.0, ("KR", "android"): 1.9, ("US", "ios"): 1.2, ("US", "android"): 0.9}, 0.5),
    "house": ({("KR", "ios"): 0.4, ("KR", "android"): 0.4, ("US", "ios"): 0.4, ("US", "android"): 0.4}, 0.1),
}


def demo_placement() -> PlacementConfig:
    return PlacementConfig(
        DEMO_PLACEMENT,
        (
            NetworkConfig("admob", 0.1, 20.0, auction="second"),
            NetworkConfig("adfit", 0.1, 20.0, auction="second"),
            NetworkConfig("house", 0.0, 2.0, min_share=0.05, auction="first"),
        ),
        ("country", "os"),
        "USD",
    )


def demo_events(n: int = DEMO_EVENTS, seed: int = 7, ts: float | None = None) -> list[dict]:
    """``n`` outcome events (HTTP-contract dicts) from the fixed demo market."""
    rng = np.random.default_rng(seed)
    ts = time.time() if ts is None else ts
    networks = list(_MARKET)
    segments = list(_MARKET["admob"][0])
    events = []
    for i in range(n):
        network = networks[rng.integers(len(networks))]
        country, os_ = segments[rng.integers(len(segments))]
        medians, sd = _MARKET[network]
        bids = np.sort(medians[(country, os_)] * np.exp(sd * rng.standard_normal(2)))
        floor = round(float(rng.uniform(0.1, 4.0)) if network != "house" else 0.2, 2)
        filled = bool(bids[1] >= floor)
        price = (max(bids[0], floor) if network != "house" else bids[1]) if filled else 0.0
        events.append(
            {
                "event_id": f"demo-{i}",
                "ts": ts,
                "placement": DEMO_PLACEMENT,
                "network": network,
                "floor_cpm": floor,
                "filled": filled,
                "revenue_cpm": round(float(price), 4),
                "context": {"country": country, "os": os_},
            }
        )
    return events


def install_demo(store) -> bool:  # store: serving.store.PolicyStore
    """Create and feed the demo placement if the store has no placement at all."""
    if store.list_placements():
        return False
    store.put_placement(demo_placement())
    result = store.ingest(demo_events())
    log.info("demo placement created", extra={"fields": {"placement": DEMO_PLACEMENT, "events": result.accepted}})
    return True
