"""Helpers shared by the policies: empirical per-network figures and simple tables."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import AUCTION_CODES, SUMMARY_FIELDS, SegmentTable
from bandit.stats import ATFLOOR, FILLS, PRICE, REQUESTS, REVENUE, REVENUE_SQ
from bandit.types import PlacementConfig


def detect_auction(stats: NDArray[np.float64], configured: str, min_fills: float = 20.0, share: float = 0.02) -> str:
    """'first' or 'second' for one network's statistics [F, B].

    Second-price networks put probability mass exactly at the floor (one bidder above
    it pays the floor); first-price networks never do. Without enough fills, assume
    second price (the commoner ad-network mechanism) unless configured.
    """
    if configured != "auto":
        return configured
    fills = stats[ATFLOOR].sum() + stats[PRICE].sum()
    if fills < min_fills:
        return "second"
    return "second" if stats[ATFLOOR].sum() >= share * fills else "first"


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
        auction = AUCTION_CODES.index(detect_auction(stats[i], cfg.auction))
        out[i] = (floors[i], floors[i], floors[i], mean, sd, fill, auction)
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
