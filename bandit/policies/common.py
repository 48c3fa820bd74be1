"""Helpers shared by the policies: empirical per-network figures and simple tables."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2

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

    Second price when the at-floor share of all fills reaches ``share``, or when some floor
    bins show more than ``share`` beyond chance (:func:`at_floor_excess`): at floors far
    below its bids a second-price network seldom fills at the floor (its two best bids both
    clear it), so fills at low floors tried for exploration must not dilute what the binding
    floors show.

    First price only on strong evidence where floors bind (:func:`first_price_log_odds`
    beyond ``FIRST_PRICE_ODDS``): a network taken for first price is given floors at its
    lower bound, where neither type fills at the floor, so a wrong verdict would never be
    corrected; a few binding fills that happen to miss the floor must not give it. Until
    then second price, whose floors explore the binding region that settles it.

    The confidence is the posterior probability of the detected type, equal prior odds: of
    two binomial hypotheses for the at-floor share of all fills (``FIRST_PRICE_AT_FLOOR`` vs
    ``SECOND_PRICE_AT_FLOOR``) when that share decides, of the excess when the floor bins do,
    of the binding fills otherwise; 1 when configured, 0.5 without enough fills.
    """
    if configured != "auto":
        return configured, 1.0
    at = float(stats[ATFLOOR].sum())
    fills = at + float(stats[PRICE].sum())
    if fills < min_fills:
        return "second", 0.5
    if at >= share * fills:
        p1, p2 = FIRST_PRICE_AT_FLOOR, SECOND_PRICE_AT_FLOOR
        return "second", _odds_probability(at * math.log(p2 / p1) + (fills - at) * math.log((1 - p2) / (1 - p1)))
    excess = at_floor_excess(stats[ATFLOOR], stats[FILLS], share)
    if excess > 0:
        return "second", _odds_probability(excess)
    first = first_price_log_odds(stats)
    if first >= math.log(FIRST_PRICE_ODDS):
        return "first", _odds_probability(first)
    return "second", _odds_probability(-first)


def _odds_probability(log_odds: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(log_odds, 700.0), -700.0)))


#: False-alarm probability of :func:`at_floor_excess` for a network whose at-floor share is
#: ``share`` in every floor bin.
EXCESS_ALPHA = 1e-4


def at_floor_excess(at: NDArray[np.float64], fills: NDArray[np.float64], share: float) -> float:
    """Log odds that some floor bins' at-floor shares exceed ``share`` (``at`` and ``fills``
    [B] per floor bin): the generalized likelihood ratio of a free share per bin, at least
    ``share``, against ``share`` in all, ``Λ = Σ_b fills_b · KL(at_b / fills_b ‖ share)`` over
    the bins above it, less its ``1 − EXCESS_ALPHA`` quantile without excess (half a χ² with a
    degree of freedom per bin with fills), so positive only beyond chance."""
    used = fills > 0
    k = int(used.sum())
    if k == 0:
        return -math.inf
    n, a = fills[used], np.minimum(at[used], fills[used])
    q = a / n
    above = q > share
    q, n = q[above], n[above]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = q * np.log(q / share) + np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - share)), 0.0)
    return float((n * kl).sum()) - 0.5 * float(chi2.isf(EXCESS_ALPHA, k))


#: Odds of first price from the binding fills before a network is taken for first price: a
#: second-price network's odds reach it with probability at most 1 / ``FIRST_PRICE_ODDS``
#: (Ville's inequality; the odds are a martingale under the second-price hypothesis and a
#: supermartingale under any larger at-floor share).
FIRST_PRICE_ODDS = 1e4
#: Under second price, the at-floor share of fills at a floor that the clearing prices seen
#: at lower floors fall below a share π of the time, per unit of π (1 for two independent
#: bidders and small π; less when the bidders' values move together).
SECOND_PRICE_AT_FLOOR_PER_CUT = 0.5
#: Fills at lower floors before their prices say how much a floor binds (fewer shrink it to 0).
BINDING_MIN_FILLS = 20.0


def first_price_log_odds(stats: NDArray[np.float64]) -> float:
    """Log odds of first against second price from the at-floor fills of each floor bin [F, B].

    A floor bin tells the types apart as far as the floor binds: π_b, the share of the fills at
    lower floors priced below it (clearing prices under second price, bids under first), says
    how often. Second price then fills at the floor with probability
    ``SECOND_PRICE_AT_FLOOR_PER_CUT · π_b``, first price with ``FIRST_PRICE_AT_FLOOR`` (the
    tolerance window only); fills at floors that do not bind (π_b ≈ 0) count for neither."""
    at, fills = stats[ATFLOOR], stats[FILLS]
    # Fills at floor bins below b, and those of them priced below bin b (above-floor prices in
    # bins below b come only from floors below b).
    below = np.concatenate([[0.0], np.cumsum(fills)[:-1]])
    priced_below = np.concatenate([[0.0], np.cumsum(stats[PRICE] + at)[:-1]])
    cut = priced_below / np.maximum(below, BINDING_MIN_FILLS)
    p1 = FIRST_PRICE_AT_FLOOR
    p2 = np.maximum(SECOND_PRICE_AT_FLOOR_PER_CUT * cut, p1)
    a = np.minimum(at, fills)
    return float((a * np.log(p1 / p2) + (fills - a) * np.log((1 - p1) / (1 - p2))).sum())


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
