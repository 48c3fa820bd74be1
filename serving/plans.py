"""Waterfall and auction placements over HTTP: the plans an allocation shows, and the
multi-network outcome shape expanded into ordinary per-network outcome events.

A plan (:class:`bandit.allocation.SegmentTable`, ``plan_tiers`` / ``plan_floors`` /
``plan_probs``) calls some networks, each at its floor: a waterfall's tiers in order, an
auction's bidders at once. :func:`top_plans` lists a table's most probable ones.

A multi-network outcome reports what each called network answered::

    {"event_id": "e1", "decision_id": "…", "ts": …, "placement": "wf", "context": {…},
     "responses": [{"network": "alpha", "floor_cpm": 2.0, "status": "no_bid"},
                   {"network": "beta", "floor_cpm": 1.1, "status": "bid", "price_cpm": 1.4, "won": true}]}

:func:`expand_outcome` checks its shape and turns it into one ordinary outcome event per
response (event id ``"<event_id>/<network>"``, ``filled`` = status ``bid``, ``revenue_cpm``
= ``price_cpm`` or 0), so the event log, de-duplication and learning see only the events
they already know: a no-bid, a bid below the floor or a timeout at floor f is the censored
observation "no fill at f", a bid is a fill at its price. Any error rejects the whole event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from bandit import MAX_CPM
from bandit.allocation import SegmentTable
from bandit.errors import InvalidOutcome
from bandit.policy import plan_offers

__all__ = [
    "MULTI_FIELDS",
    "RESPONSE_FIELDS",
    "STATUSES",
    "TOP_PLANS",
    "check_multi_fields",
    "expand_outcome",
    "request_revenue",
    "top_plans",
]

#: Plans listed by ``GET /v1/placements/{p}/allocation`` of a waterfall or auction placement.
TOP_PLANS = 10
#: What a called network answered; only ``bid`` is a fill.
STATUSES = ("bid", "no_bid", "below_floor", "timeout")
#: The fields of a multi-network outcome event and of one of its responses.
MULTI_FIELDS = frozenset({"event_id", "decision_id", "ts", "placement", "context", "responses"})
RESPONSE_FIELDS = frozenset({"network", "floor_cpm", "status", "price_cpm", "won"})


def top_plans(table: SegmentTable, network_ids: Sequence[str], top: int = TOP_PLANS) -> list[dict]:
    """The ``top`` most probable plans of ``table``: ``{"probability", "offers": [{"network",
    "floor_cpm"}, …]}`` with offers in calling order (an auction's in network order)."""
    if table.plan_probs is None or table.plan_tiers is None or table.plan_floors is None:
        return []
    probs = table.plan_probs / table.plan_probs.sum()
    # Rows past a table's distinct plans are padding of probability 0: never shown.
    order = np.argsort(-probs, kind="stable")[: min(top, int((probs > 0).sum()))]
    out = []
    for p in order.tolist():
        offers = plan_offers(table.plan_tiers[p], table.plan_floors[p], network_ids)
        out.append({"probability": float(probs[p]), "offers": [{"network": n, "floor_cpm": f} for n, f in offers]})
    return out


def check_multi_fields(raw: Mapping) -> None:
    """Reject unknown or missing top-level fields of an outcome with ``responses``."""
    unknown = [str(k) for k in raw if k not in MULTI_FIELDS]
    if unknown:
        raise InvalidOutcome(
            f"unknown field(s) {unknown[:5]}; an outcome with responses has only {sorted(MULTI_FIELDS)} "
            "(network, floor_cpm, filled and revenue_cpm go in each response as network, floor_cpm, status, price_cpm)"
        )
    missing = [k for k in ("event_id", "ts", "placement") if k not in raw]
    if missing:
        raise InvalidOutcome(f"missing required fields {missing}")


def expand_outcome(raw: Mapping, network_ids: Sequence[str], mode: str) -> list[dict]:
    """Ordinary outcome events (one per response, in the event's order) of a multi-network
    outcome ``raw`` of a placement with ``network_ids`` and ``mode``; :class:`InvalidOutcome`
    naming the first problem (its top-level fields are checked by :func:`check_multi_fields`).
    The time, context and fields of each event are then checked as any outcome's; the
    decision id is checked against the whole plan by the caller."""
    placement = raw.get("placement")
    if mode == "single":
        raise InvalidOutcome(
            f"placement {placement!r} is single-network: report network, floor_cpm, filled and revenue_cpm "
            "instead of responses"
        )
    event_id = raw.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidOutcome(f"event_id must be a non-empty string, got {event_id!r}")
    responses = raw["responses"]
    if not isinstance(responses, list) or not responses:
        raise InvalidOutcome("responses must be a non-empty array of {network, floor_cpm, status, price_cpm?, won?}")
    if len(responses) > len(network_ids):
        raise InvalidOutcome(
            f"responses has {len(responses)} entries; placement {placement!r} has {len(network_ids)} networks"
        )
    seen: set[str] = set()
    winners = 0
    events = []
    for k, r in enumerate(responses):
        where = f"responses[{k}]"
        network, floor, status, price, won = _response(r, where, network_ids, placement)
        if network in seen:
            raise InvalidOutcome(f"{where}: network {network!r} appears twice; report each called network once")
        seen.add(network)
        winners += won
        if winners > 1:
            raise InvalidOutcome(f"{where}: more than one response has won: true; at most one network wins")
        events.append(
            {
                "event_id": f"{event_id}/{network}",
                "ts": raw.get("ts"),
                "placement": placement,
                "network": network,
                "floor_cpm": floor,
                "filled": status == "bid",
                "revenue_cpm": price if status == "bid" else 0.0,
                "context": raw.get("context") or {},
            }
        )
    return events


def request_revenue(responses: Sequence[Mapping], mode: str) -> float:
    """What one multi-network outcome earned the publisher (CPM): the price of the response
    that ``won``; without a winner, a waterfall's first bid (the tier that filled) and an
    auction's highest bid (the highest bid wins); 0 when nothing bid. ``responses`` are those
    :func:`expand_outcome` accepted. Losing bids are evidence for their networks' models, not
    revenue: the experiment report counts the outcome as one request earning this."""
    bids = [float(r["price_cpm"]) for r in responses if r.get("status") == "bid"]
    won = [float(r["price_cpm"]) for r in responses if r.get("won") is True]
    if won:
        return won[0]
    if not bids:
        return 0.0
    return bids[0] if mode == "waterfall" else max(bids)


def _response(
    r: object, where: str, network_ids: Sequence[str], placement: object
) -> tuple[str, float, str, float, bool]:
    """(network, floor_cpm, status, price_cpm, won) of one response, checked."""
    if not isinstance(r, Mapping):
        raise InvalidOutcome(f"{where} must be an object {{network, floor_cpm, status, price_cpm?, won?}}")
    unknown = [str(k) for k in r if k not in RESPONSE_FIELDS]
    if unknown:
        raise InvalidOutcome(f"{where}: unknown field(s) {unknown[:5]}; a response has only {sorted(RESPONSE_FIELDS)}")
    missing = [k for k in ("network", "floor_cpm", "status") if k not in r]
    if missing:
        raise InvalidOutcome(f"{where}: missing required fields {missing}")
    network = r["network"]
    if network not in network_ids:
        raise InvalidOutcome(
            f"{where}: network {network!r} is not a network of placement {placement!r}; its networks: "
            f"{list(network_ids)}"
        )
    floor = _cpm(r["floor_cpm"], f"{where}.floor_cpm")
    status = r["status"]
    if status not in STATUSES:
        raise InvalidOutcome(f"{where}: status must be one of {list(STATUSES)}, got {status!r}")
    price = r.get("price_cpm")
    if status == "bid":
        if price is None:
            raise InvalidOutcome(f"{where}: status 'bid' needs price_cpm, the price bid or paid (CPM)")
        price = _cpm(price, f"{where}.price_cpm")
    elif price is not None:
        raise InvalidOutcome(
            f"{where}: price_cpm is only for status 'bid' (a {status!r} response fills nothing and pays nothing)"
        )
    won = r.get("won", False)
    if not isinstance(won, bool):
        raise InvalidOutcome(f"{where}: won must be true or false, got {won!r}")
    if won and status != "bid":
        raise InvalidOutcome(f"{where}: won is true but status is {status!r}; only a bid can win")
    return network, floor, status, price or 0.0, won


def _cpm(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOutcome(f"{name} must be a number (CPM), got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value <= MAX_CPM:
        raise InvalidOutcome(f"{name} must be a price in [0, {MAX_CPM:g}] CPM, got {value!r}")
    return float(value)
