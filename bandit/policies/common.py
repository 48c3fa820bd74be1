"""Helpers shared by the policies: empirical per-network figures and simple tables."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import AUCTION_CODES, SUMMARY_FIELDS, SegmentTable
from bandit.stats import ATFLOOR, FILLS, PRICE, REQUESTS, REVENUE, REVENUE_SQ
from bandit.types import PlacementConfig

#: At-floor share of fills expected of a first-price network (the tolerance window only)
#: and of a second-price one (at least one auction in twenty with a single bid above the
#: floor); the detection threshold lies between them.
FIRST_PRICE_AT_FLOOR = 0.005
SECOND_PRICE_AT_FLOOR = 0.05


def detect_auction(
    stats: NDArray[np.float64], configured: str, min_fills: float = 20.0, share: float = 0.02
) -> tuple[str, float]:
    """('first' or 'second', confidence) for one network's statistics [F, B].

    Second-price networks put probability mass at the floor (one bidder above it pays the
    floor; a fill within max(1 cent, 0.5%) of the floor counts, see
    :func:`bandit.stats.is_at_floor`); first-price networks almost never do. Without enough
    fills, assume second price (the commoner ad-network mechanism) unless configured.
    The confidence is the posterior probability of the detected type under two binomial
    hypotheses for the at-floor share (``FIRST_PRICE_AT_FLOOR`` vs ``SECOND_PRICE_AT_FLOOR``),
    equal prior odds; 1 when configured, 0.5 without enough fills.
    """
    if configured != "auto":
        return configured, 1.0
    at = float(stats[ATFLOOR].sum())
    fills = at + float(stats[PRICE].sum())
    if fills < min_fills:
        return "second", 0.5
    kind = "second" if at >= share * fills else "first"
    p1, p2 = FIRST_PRICE_AT_FLOOR, SECOND_PRICE_AT_FLOOR
    log_lr = at * math.log(p2 / p1) + (fills - at) * math.log((1 - p2) / (1 - p1))  # second vs first
    log_lr = max(min(log_lr, 700.0), -700.0)
    p_second = 1.0 / (1.0 + math.exp(-log_lr))
    return kind, p_second if kind == "second" else 1.0 - p_second


def empirical_summary(stats: NDArray[np.float64], placement: PlacementConfig, floors: NDArray[np.float64]) -> NDArray:
    """Summary rows [N, len(SUMMARY_FIELDS)] from raw statistics [N, F, B] for fixed floors."""
    n = len(placement.networks)
    out = np.zeros((n, len(SUMMARY_FIELDS)))
    for i, cfg in enumerate(placement.networks):
        req = stats[i, REQUESTS].sum()
        rev = stats[i, REVENUE].sum()
        mean = rev / req if req > 0 else 0.0
        var = stats[i, REVENUE_SQ].sum() / req - mean**2 if req > 0 else 0.0
        sd = float(np.sqrt(max(var, 0.0) / req)) if req > 0 else 0.0
        fill = stats[i, FILLS].sum() / req if req > 0 else 0.0
        kind, confidence = detect_auction(stats[i], cfg.auction)
        out[i] = (floors[i], floors[i], floors[i], mean, sd, fill, AUCTION_CODES.index(kind), confidence)
    return out


def single_floor_table(weights: NDArray, floors: NDArray, summary: NDArray) -> SegmentTable:
    """A table with one floor per network (probability 1)."""
    n = len(weights)
    return SegmentTable(
        weights=np.asarray(weights, dtype=float),
        floors=np.asarray(floors, dtype=float).reshape(n, 1),
        floor_probs=np.ones((n, 1)),
        floor_propensity=np.ones((n, 1)),
        summary=summary,
    )
