"""Floors for several networks at once: waterfalls and parallel auctions (pure numpy).

A network is described by what it *pays given its floor*, on one log-spaced price grid
``p_0 < … < p_{X−1}`` (:data:`PRICE_POINTS`) whose points are also the candidate floors.
Cells ``c = 0 … X−1`` split the price axis: cell 0 is ``[0, p_0)``, cell c is
``[p_{c−1}, p_c)``, of width ``w_c``. For a network at floor ``p_k``:

* ``nofill[k]`` — P(no bid at floor p_k);
* ``H(c; k)`` — P(pay ≤ x) for x in cell c: ``nofill[k]`` on the cells below the floor
  (c ≤ k), ``cdf[c]`` above it (c > k), where ``cdf`` is floor-free: the top bid's CDF for
  a first-price network (it pays its bid when the bid clears the floor, so
  P(pay ≤ x) = P(B ≤ x) for x ≥ f), P(at most one bid above x) for a second-price
  network (it pays max(second bid, f)).

Then, with E[Y] = ∫ P(Y > x) dx for Y ≥ 0,

* revenue of one network R(k) = Σ_c w_c (1 − H(c; k)) = p_k (1 − nofill[k]) + Σ_{c>k} w_c (1 − cdf[c]);
* a **waterfall** (tiers tried in order until one fills, networks independent given the
  draw) earns Σ_t Π_{s<t} nofill_s R_t. For a fixed order the floors are optimal by
  backward induction, V_t = max_k R_t(k) + nofill_t[k] · V_{t+1} (a tier's floor trades its
  own revenue against passing the request on); the order is searched exhaustively for
  small placements, else by local search (:func:`best_waterfall`);
* a **parallel auction** (called networks bid at once, the highest bid wins and pays its
  bid) earns E[max_i pay_i] = Σ_c w_c (1 − Π_i H_i(c; k_i)). For one network given the
  others (Q = Π_{j≠i} H_j) the value of each of its floors costs one cumulative sum, so
  floors are optimised by coordinate ascent, and the called subset (at most ``max_calls``)
  greedily then by swaps (:func:`best_auction`).

Every function is vectorised over a leading axis D of posterior draws: Thompson sampling
optimises one plan per draw, and the share of draws choosing a plan is its probability.
Search results are checked against brute force in ``tests/bandit/test_modes.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linprog

from bandit.allocation import discrete_quantile, matched_shares, merge_plans

#: Candidate floors and price grid (CPM): 5% steps from 0.01 to 1,000.
PRICE_POINTS = np.exp(np.arange(math.log(0.01), math.log(1000.0) + 1e-9, 0.05))
#: Width of each price cell [X]: cell 0 is [0, p_0), cell c is [p_{c−1}, p_c).
CELL_WIDTHS = np.diff(np.concatenate([[0.0], PRICE_POINTS]))
#: Placements up to this many networks search waterfall orders exhaustively.
EXHAUSTIVE_NETWORKS = 6
#: Local-search passes (waterfall moves, auction swaps) and coordinate-ascent sweeps.
MAX_PASSES = 8
#: Floor exploration (:func:`explored_plans`): the most probable plans that give variants
#: (as many as a table has draws, so every plan of an uncontracted auction explores).
EXPLORED_PLANS = 16


@dataclass(frozen=True, slots=True)
class PayCurves:
    """What each network pays given its floor, per draw: ``nofill`` and ``cdf`` are [D, N, X]
    (see the module docstring); ``allowed`` [N, X] marks the floors inside each network's bounds."""

    nofill: NDArray[np.float64]
    cdf: NDArray[np.float64]
    allowed: NDArray[np.bool_]
    log_nofill: NDArray[np.float64] = field(init=False, repr=False)
    log_cdf: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_nofill", np.log(np.maximum(self.nofill, 1e-300)))
        object.__setattr__(self, "log_cdf", np.log(np.maximum(self.cdf, 1e-300)))

    @property
    def shape(self) -> tuple[int, int, int]:
        d, n, x = self.nofill.shape
        return d, n, x

    def revenue(self) -> NDArray[np.float64]:
        """R [D, N, X]: expected revenue per call at each candidate floor."""
        tail = np.cumsum(((1.0 - self.cdf) * CELL_WIDTHS)[..., ::-1], axis=-1)[..., ::-1]
        above = np.concatenate([tail[..., 1:], np.zeros_like(tail[..., :1])], axis=-1)
        return PRICE_POINTS * (1.0 - self.nofill) + above


class BidCurve(Protocol):
    """One network's posterior draws (:class:`bandit.gmm.RevenueCurve` and kin)."""

    @property
    def n_draws(self) -> int: ...

    def fill_rate(self, log_floor: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def pay_cdf(self, log_price: NDArray[np.float64]) -> NDArray[np.float64]: ...


def pay_curves(
    curves: Sequence[BidCurve], log_levels: Sequence[float], allowed: NDArray[np.bool_], draws: int
) -> PayCurves:
    """:class:`PayCurves` of N networks from their curves' draws (the first ``draws`` of each,
    cycled when a curve has fewer), with bids scaled by the hour level e^{log_level}."""
    x = np.log(PRICE_POINTS)
    nofill, cdf = [], []
    for curve, shift in zip(curves, log_levels, strict=True):
        grid = np.broadcast_to(x - shift, (curve.n_draws, len(x)))
        no = 1.0 - curve.fill_rate(grid)
        above = curve.pay_cdf(grid)
        cells = np.concatenate([above[:, :1], 0.5 * (above[:, 1:] + above[:, :-1])], axis=1)
        pick = np.arange(draws) % len(no)
        nofill.append(np.clip(no[pick], 0.0, 1.0))
        cdf.append(np.clip(cells[pick], 0.0, 1.0))
    return PayCurves(np.stack(nofill, axis=1), np.stack(cdf, axis=1), allowed)


def allowed_floors(floor_min: NDArray[np.float64], floor_max: NDArray[np.float64]) -> NDArray[np.bool_]:
    """[N, X]: candidate floors within each network's bounds; the lowest point stands for any
    floor below it (a floor of 0 is 'no floor'), so a network always has one candidate."""
    lo, hi = np.asarray(floor_min)[:, None], np.asarray(floor_max)[:, None]
    inside = (PRICE_POINTS[None, :] >= lo * (1 - 1e-9)) & (PRICE_POINTS[None, :] <= hi * (1 + 1e-9))
    first = np.clip(np.searchsorted(PRICE_POINTS, np.asarray(floor_min) * (1 - 1e-9)), 0, len(PRICE_POINTS) - 1)
    inside[np.arange(len(first)), first] = True
    return inside


def floor_cpm(index: NDArray[np.int64], floor_min: NDArray[np.float64], floor_max: NDArray[np.float64]) -> NDArray:
    """The floors (CPM) of candidate indices, clipped to the bounds (same shapes)."""
    return np.clip(PRICE_POINTS[index], floor_min, floor_max)


# --------------------------------------------------------------------------- waterfall
def tier_floors(
    fill: NDArray[np.float64], revenue: NDArray[np.float64], allowed: NDArray[np.bool_]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Best floors of a waterfall in a fixed order by backward induction.

    ``fill``, ``revenue``: [D, K, X] of the tiers in order; ``allowed`` [D, K, X] (or
    broadcastable). Returns floor indices [D, K] and the waterfall's value [D].
    """
    d, k, _ = fill.shape
    value = np.zeros(d)
    floors = np.zeros((d, k), dtype=np.int64)
    for t in range(k - 1, -1, -1):
        total = revenue[:, t] + (1.0 - fill[:, t]) * value[:, None]
        total = np.where(np.broadcast_to(allowed, fill.shape)[:, t], total, -np.inf)
        floors[:, t] = np.argmax(total, axis=1)
        value = np.take_along_axis(total, floors[:, t, None], axis=1)[:, 0]
    return floors, value


def _ordered(a: NDArray, order: NDArray[np.int64]) -> NDArray:
    """a [D, N, X] rearranged to the tiers of ``order`` [D, K]: [D, K, X]."""
    return np.take_along_axis(a, order[:, :, None], axis=1)


def _waterfall_of(
    fill: NDArray, revenue: NDArray, allowed: NDArray, order: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    allowed_o = np.broadcast_to(allowed[None], fill.shape)
    return tier_floors(_ordered(fill, order), _ordered(revenue, order), _ordered(allowed_o, order))


def waterfall_value(
    fill: NDArray[np.float64], revenue: NDArray[np.float64], order: NDArray[np.int64], floors: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Value [D] of waterfalls ``order`` [D, K] (network indices) at floor indices [D, K]."""
    f = np.take_along_axis(_ordered(fill, order), floors[:, :, None], axis=2)[..., 0]
    r = np.take_along_axis(_ordered(revenue, order), floors[:, :, None], axis=2)[..., 0]
    reach = np.cumprod(np.concatenate([np.ones((len(f), 1)), 1.0 - f[:, :-1]], axis=1), axis=1)
    return (reach * r).sum(axis=1)


def best_waterfall(
    fill: NDArray[np.float64], revenue: NDArray[np.float64], allowed: NDArray[np.bool_], max_depth: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """The best waterfall per draw from each network's fill rate and revenue per call at each
    candidate floor ([D, N, X]; ``allowed`` [N, X]): order [D, K] (network indices), floor
    indices [D, K] and value [D], with K = min(max_depth, N).

    Exhaustive over ordered subsets when N ≤ :data:`EXHAUSTIVE_NETWORKS`; otherwise tiers
    start in decreasing price given fill at each network's own best floor (the order that
    is optimal for fixed floors by an exchange argument), floors follow by backward
    induction, and local search swaps adjacent tiers and replaces a tier by a network left
    out until no move improves (at most :data:`MAX_PASSES` passes).
    """
    d, n, _ = fill.shape
    k = min(max_depth, n)
    best_value = np.full(d, -np.inf)
    best_order = np.zeros((d, k), dtype=np.int64)
    best_floors = np.zeros((d, k), dtype=np.int64)

    def consider(order: NDArray[np.int64]) -> None:
        floors, value = _waterfall_of(fill, revenue, allowed, order)
        better = value > best_value + 1e-12
        best_value[better] = value[better]
        best_order[better] = order[better]
        best_floors[better] = floors[better]

    if n <= EXHAUSTIVE_NETWORKS:
        for perm in itertools.permutations(range(n), k):
            consider(np.broadcast_to(np.array(perm), (d, k)))
        return best_order, best_floors, best_value
    solo = np.where(allowed[None], revenue, -np.inf)
    at = np.argmax(solo, axis=2)
    price = np.take_along_axis(revenue, at[..., None], axis=2)[..., 0] / np.maximum(
        np.take_along_axis(fill, at[..., None], axis=2)[..., 0], 1e-12
    )
    consider(np.argsort(-price, axis=1, kind="stable")[:, :k])
    rows = np.arange(d)
    for _ in range(MAX_PASSES):
        before = best_value.copy()
        for t in range(k - 1):  # adjacent swaps
            order = best_order.copy()
            order[:, [t, t + 1]] = order[:, [t + 1, t]]
            consider(order)
        if k < n:  # a network left out replaces a tier
            for t in range(k):
                for j in range(n):
                    order = best_order.copy()
                    out = ~(best_order == j).any(axis=1)
                    order[rows[out], t] = j
                    consider(order)
        if not (best_value > before + 1e-12).any():
            break
    return best_order, best_floors, best_value


# ----------------------------------------------------------------------- parallel auction
def _log_cdfs(curves: PayCurves, called: NDArray[np.bool_], floors: NDArray[np.int64]) -> NDArray[np.float64]:
    """log H_i(c; k_i) [D, N, X] of every network at its floor index [D, N]; 0 (H = 1: never
    bids) for a network not ``called`` [D, N]."""
    x = curves.nofill.shape[2]
    below = np.arange(x)[None, None, :] <= floors[:, :, None]
    nofill = np.take_along_axis(curves.log_nofill, floors[:, :, None], axis=2)
    return np.where(called[:, :, None], np.where(below, nofill, curves.log_cdf), 0.0)


def _log_cdf(curves: PayCurves, j: int, called: NDArray[np.bool_], floors: NDArray[np.int64]) -> NDArray:
    """log H_j(c; k_j) [D, X] of network ``j`` alone (``called`` and ``floors`` [D] of it)."""
    below = np.arange(curves.nofill.shape[2])[None, :] <= floors[:, None]
    nofill = np.take_along_axis(curves.log_nofill[:, j], floors[:, None], axis=1)
    return np.where(called[:, None], np.where(below, nofill, curves.log_cdf[:, j]), 0.0)


def auction_value(curves: PayCurves, called: NDArray[np.bool_], floors: NDArray[np.int64]) -> NDArray[np.float64]:
    """E[highest bid] [D] when the networks ``called`` [D, N] bid at floor indices [D, N]."""
    lose = np.exp(_log_cdfs(curves, called, floors).sum(axis=1))
    return ((1.0 - lose) * CELL_WIDTHS).sum(axis=1)


def _responses(
    nofill: NDArray[np.float64], cdf: NDArray[np.float64], allowed: NDArray[np.bool_], others: NDArray[np.float64]
) -> tuple[NDArray, NDArray]:
    """Best floor indices and the auction's values of networks with ``nofill`` and ``cdf``
    [D, ..., X] (floors ``allowed`` [..., X]) given the others' P(highest bid ≤ x) ``others``
    (broadcast to them): value(k) = Σ w − nofill[k]·Σ_{c≤k} w Q − Σ_{c>k} w Q cdf."""
    wq = CELL_WIDTHS * others
    below = np.cumsum(wq, axis=-1)
    above = np.cumsum((wq * cdf)[..., ::-1], axis=-1)[..., ::-1]
    above = np.concatenate([above[..., 1:], np.zeros((*above.shape[:-1], 1))], axis=-1)
    value = np.where(allowed, CELL_WIDTHS.sum() - nofill * below - above, -np.inf)
    k = np.argmax(value, axis=-1)
    return k, np.take_along_axis(value, k[..., None], axis=-1)[..., 0]


def _response(
    curves: PayCurves, network: int, others: NDArray[np.float64], draws: NDArray[np.int64] | slice = slice(None)
) -> tuple[NDArray, NDArray]:
    """The network's best floor index and the auction's value in the ``draws`` (default all:
    [D]) given the others' P(highest bid ≤ x) ``others`` [len(draws), X] there."""
    return _responses(curves.nofill[draws, network], curves.cdf[draws, network], curves.allowed[network], others)


def _response_of_each(curves: PayCurves, others: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """:func:`_response` of every network [D, N] to the same ``others`` [D, X]."""
    return _responses(curves.nofill, curves.cdf, curves.allowed, others[:, None, :])


def auction_floors(
    curves: PayCurves, called: NDArray[np.bool_], floors: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Coordinate ascent on the floors of the ``called`` networks [D, N] from ``floors`` [D, N]:
    each network in turn takes its best floor given the others', until no floor moves."""
    floors = floors.copy()
    n = curves.shape[1]
    logs = _log_cdfs(curves, called, floors)
    total = logs.sum(axis=1)
    for _ in range(MAX_PASSES):
        moved = False
        for j in range(n):
            rows = np.flatnonzero(called[:, j])  # the draws that call j: elsewhere its floor is idle
            if not len(rows):
                continue
            k, _ = _response(curves, j, np.exp(total[rows] - logs[rows, j]), rows)
            change = k != floors[rows, j]
            if change.any():
                floors[rows[change], j] = k[change]
                new = _log_cdf(curves, j, called[:, j], floors[:, j])
                total += new - logs[:, j]
                logs[:, j] = new
                moved = True
        if not moved:
            break
    return floors, auction_value(curves, called, floors)


def best_auction(curves: PayCurves, max_calls: int) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64]]:
    """The best parallel auction per draw: networks called [D, N] (at most ``max_calls``),
    floor indices [D, N] and value [D].

    Floors by coordinate ascent from two starts — each network's own best floor (as if it
    were alone) and the lowest allowed floor — keeping the better. Calling one more network
    never lowers the highest bid, so with a cap below N the subset grows greedily (the
    network adding most at its best response floor), then swaps a called network for one
    left out while that gains (at most :data:`MAX_PASSES` passes).
    """
    d, n, _ = curves.shape
    revenue = np.where(curves.allowed[None], curves.revenue(), -np.inf)
    solo = np.argmax(revenue, axis=2)  # [D, N]
    lowest = np.broadcast_to(np.argmax(curves.allowed, axis=1)[None], (d, n)).copy()
    rows = np.arange(d)
    if max_calls >= n:
        called = np.ones((d, n), dtype=bool)
    else:
        called = np.zeros((d, n), dtype=bool)
        floors = solo.copy()
        for _ in range(max_calls):
            lose = np.exp(_log_cdfs(curves, called, floors).sum(axis=1))  # the called networks
            picks, value = _response_of_each(curves, lose)  # j is not called where it counts
            j = np.argmax(np.where(called, -np.inf, value), axis=1)
            called[rows, j] = True
            floors[rows, j] = picks[rows, j]
    best_floors, best_value = auction_floors(curves, called, solo)
    alt_floors, alt_value = auction_floors(curves, called, lowest)
    use = alt_value > best_value
    best_floors[use], best_value[use] = alt_floors[use], alt_value[use]
    if max_calls < n:
        for _ in range(MAX_PASSES):
            improved = False
            for i in range(n):
                logs = _log_cdfs(curves, called, best_floors)
                without_i = np.exp(logs.sum(axis=1) - logs[:, i])
                responses = None  # every j's best response to the others without i, once asked
                for j in range(n):
                    move = called[:, i] & ~called[:, j]
                    if not move.any():
                        continue
                    if responses is None:
                        responses = _response_of_each(curves, without_i)
                    # j at its best response to the others without i; re-ascend only where it gains.
                    trial = called.copy()
                    trial[move, i] = False
                    k, v = responses[0][:, j], responses[1][:, j]
                    gain = move & (v > best_value + 1e-12)
                    if not gain.any():
                        continue
                    trial[gain, j] = True
                    trial[~gain] = called[~gain]
                    start = best_floors.copy()
                    start[gain, j] = k[gain]
                    f, v = auction_floors(curves, trial, start)
                    better = gain & (v > best_value + 1e-12)
                    if better.any():
                        called[better], best_floors[better], best_value[better] = trial[better], f[better], v[better]
                        logs = _log_cdfs(curves, called, best_floors)
                        without_i = np.exp(logs.sum(axis=1) - logs[:, i])
                        responses = None
                        improved = True
            if not improved:
                break
    best_floors = np.where(called, best_floors, solo)
    return called, best_floors, best_value


def best_priced_auction(
    curves: PayCurves, max_calls: int, bonus: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64]]:
    """The auction maximising value + Σ_{j called} ``bonus[d, j]`` per draw (a price per call
    of each network, [D, N]: positive to draw calls to a network, negative to keep them off),
    calling at least one network and at most ``max_calls``: networks called [D, N], floor
    indices [D, N] and the auction's value [D] (without the bonuses).

    The pricing step of :func:`contracted_auctions`. Greedy from no call: add the network
    whose call gains most (its best-response floor's value gain plus its bonus) while that
    is positive; floors by coordinate ascent; then local search over dropping, adding and
    swapping one network (each move valued at the moved network's best response, kept after
    re-ascent only if it gains), at most :data:`MAX_PASSES` passes.
    """
    d, n, _ = curves.shape
    rows = np.arange(d)
    cap = min(max_calls, n)
    total_w = CELL_WIDTHS.sum()
    called = np.zeros((d, n), dtype=bool)
    floors = np.argmax(np.where(curves.allowed[None], curves.revenue(), -np.inf), axis=2)
    value = np.zeros(d)
    for r in range(cap):
        lose = np.exp(_log_cdfs(curves, called, floors).sum(axis=1))
        picks, v = _response_of_each(curves, lose)
        gains = np.where(called, -np.inf, v - value[:, None] + bonus)
        j = np.argmax(gains, axis=1)
        add = (gains[rows, j] > 1e-12) | (r == 0)
        called[rows[add], j[add]] = True
        floors[rows[add], j[add]] = picks[rows[add], j[add]]
        value = np.where(add, gains[rows, j] + value - bonus[rows, j], value)
        if not add.any():
            break
    floors, value = auction_floors(curves, called, floors)

    def objective(c: NDArray[np.bool_], v: NDArray[np.float64]) -> NDArray[np.float64]:
        return v + (bonus * c).sum(axis=1)

    best = objective(called, value)
    for _ in range(MAX_PASSES):
        improved = False
        logs = _log_cdfs(curves, called, floors)
        total = logs.sum(axis=1)
        size = called.sum(axis=1)
        # Moves (i out or None, j in or None), valued at j's best response to the rest.
        moves = [(i, None) for i in range(n)] + [(None, j) for j in range(n)]
        moves += [(i, j) for i in range(n) for j in range(n) if i != j]
        for i, j in moves:
            ok = np.ones(d, dtype=bool)
            rest = total.copy()
            trial = called.copy()
            if i is not None:
                ok &= called[:, i]
                rest = rest - logs[:, i]
                trial[:, i] = False
            if j is not None:
                ok &= ~called[:, j]
                if i is None:
                    ok &= size < cap
                k, v = _response(curves, j, np.exp(rest))
                trial[:, j] = True
            else:
                ok &= size > 1
                v = total_w - (CELL_WIDTHS * np.exp(rest)).sum(axis=1)
                k = None
            gain = ok & (objective(trial, v) > best + 1e-12)
            if not gain.any():
                continue
            start = floors.copy()
            if j is not None:
                start[gain, j] = k[gain]
            trial[~gain] = called[~gain]
            f, v = auction_floors(curves, trial, start)
            better = gain & (objective(trial, v) > best + 1e-12)
            if better.any():
                called[better], floors[better], value[better] = trial[better], f[better], v[better]
                best = objective(called, value)
                logs = _log_cdfs(curves, called, floors)
                total = logs.sum(axis=1)
                size = called.sum(axis=1)
                improved = True
        if not improved:
            break
    return called, floors, value


#: Column-generation rounds of :func:`contracted_auctions`.
CONTRACT_ROUNDS = 12
#: Penalty per unit of contract violation in its linear programmes (CPM; far above any value).
CONTRACT_PENALTY = 1e6


def contracted_auctions(
    curves: PayCurves, max_calls: int, lo: NDArray[np.float64], hi: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64]]:
    """Auctions under a call-share contract: per draw, the best mixture of auctions whose
    share of requests calling network j lies in [lo_j, hi_j].

    Per draw d, a linear programme over auctions S (subset and floors), x_S ≥ 0, Σ x_S = 1:
    maximise Σ x_S value_d(S) subject to lo_j ≤ Σ_{S ∋ j} x_S ≤ hi_j. Its columns come by
    column generation: start from the draw's unconstrained best auction and the one pushed
    to every min-share network and off every max-share network, solve (scipy's HiGHS, the
    contract's rows softened by :data:`CONTRACT_PENALTY` so every round has a solution),
    and add the auction of best reduced cost — :func:`best_priced_auction` with each
    network's call priced at its contract rows' duals — until none improves (at most
    :data:`CONTRACT_ROUNDS` rounds). The contract holds per draw, so it holds for the
    posterior average (the served table), as the single mode's and the waterfall's do.

    Returns called [D, C, N], floor indices [D, C, N] and weights [D, C] (each row sums to 1;
    C columns, weight 0 for a draw's unused ones).
    """
    d, n, _ = curves.shape
    low = np.flatnonzero(lo > 0)
    high = np.flatnonzero(hi < 1)
    push = np.zeros(n)
    push[low] += CONTRACT_PENALTY
    push[high] -= CONTRACT_PENALTY
    columns = [best_priced_auction(curves, max_calls, np.zeros((d, n)))]
    columns.append(best_priced_auction(curves, max_calls, np.broadcast_to(push, (d, n))))
    weights = np.zeros((d, 0))
    for _ in range(CONTRACT_ROUNDS):
        called = np.stack([c[0] for c in columns], axis=1)  # [D, C, N]
        values = np.stack([c[2] for c in columns], axis=1)  # [D, C]
        weights = np.zeros(values.shape)
        bonus = np.zeros((d, n))
        floor_value = np.zeros(d)
        for r in range(d):
            x, y_eq, y_lo, y_hi = _contract_lp(values[r], called[r], lo, hi, low, high)
            weights[r] = x
            bonus[r, low] -= y_lo
            bonus[r, high] += y_hi
            floor_value[r] = -y_eq
        new = best_priced_auction(curves, max_calls, bonus)
        reduced = new[2] + (bonus * new[0]).sum(axis=1) - floor_value
        if not (reduced > 1e-9 * np.maximum(1.0, np.abs(floor_value))).any():
            break
        columns.append(new)
    called = np.stack([c[0] for c in columns], axis=1)[:, : weights.shape[1]]
    floors = np.stack([c[1] for c in columns], axis=1)[:, : weights.shape[1]]
    return called, floors, weights


def _contract_lp(
    values: NDArray[np.float64],
    called: NDArray[np.bool_],
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    low: NDArray[np.int64],
    high: NDArray[np.int64],
) -> tuple[NDArray[np.float64], float, NDArray[np.float64], NDArray[np.float64]]:
    """One draw's programme over columns (values [C], called [C, N]): the weights [C] and the
    duals of Σ x = 1, of the min-share rows and of the max-share rows (HiGHS marginals of the
    minimisation: ∂ objective / ∂ right-hand side)."""
    c, m_lo, m_hi = len(values), len(low), len(high)
    a = called.T.astype(np.float64)  # [N, C]
    # Variables: x [C], slack_lo [m_lo], slack_hi [m_hi].
    cost = np.concatenate([-values, np.full(m_lo + m_hi, CONTRACT_PENALTY)])
    rows, rhs = [], []
    for k, j in enumerate(low):  # −a_j·x − s ≤ −lo_j
        row = np.zeros(c + m_lo + m_hi)
        row[:c], row[c + k] = -a[j], -1.0
        rows.append(row), rhs.append(-lo[j])
    for k, j in enumerate(high):  # a_j·x − s ≤ hi_j
        row = np.zeros(c + m_lo + m_hi)
        row[:c], row[c + m_lo + k] = a[j], -1.0
        rows.append(row), rhs.append(hi[j])
    eq = np.concatenate([np.ones(c), np.zeros(m_lo + m_hi)])[None]
    res = linprog(
        cost, A_ub=np.array(rows) if rows else None, b_ub=np.array(rhs) if rows else None,
        A_eq=eq, b_eq=[1.0], bounds=(0, None), method="highs",
    )  # fmt: skip
    if res.status != 0:  # cannot happen: the slacks make every programme feasible and bounded
        raise ValueError(f"contract programme failed: {res.message}")
    marg = res.ineqlin.marginals if rows else np.zeros(0)
    return res.x[:c], float(res.eqlin.marginals[0]), marg[:m_lo], marg[m_lo:]


def waterfalls_led_by(
    fill: NDArray[np.float64], revenue: NDArray[np.float64], allowed: NDArray[np.bool_], max_depth: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Per draw and network j, the best waterfall whose first tier is j: orders [D, N, K],
    floor indices [D, N, K] and values [D, N]. The tiers after j are the best waterfall of
    the other networks (it does not depend on j), and j's floor follows by backward induction."""
    d, n, _ = fill.shape
    k = min(max_depth, n)
    orders = np.zeros((d, n, k), dtype=np.int64)
    floors = np.zeros((d, n, k), dtype=np.int64)
    values = np.zeros((d, n))
    for j in range(n):
        rest = np.array([i for i in range(n) if i != j], dtype=np.int64)
        if k > 1:
            order, index, after = best_waterfall(fill[:, rest], revenue[:, rest], allowed[rest], k - 1)
            orders[:, j, 1:], floors[:, j, 1:] = rest[order], index
        else:
            after = np.zeros(d)
        total = np.where(allowed[j][None], revenue[:, j] + (1.0 - fill[:, j]) * after[:, None], -np.inf)
        orders[:, j, 0], floors[:, j, 0] = j, np.argmax(total, axis=1)
        values[:, j] = total.max(axis=1)
    return orders, floors, values


# --------------------------------------------------------------------------- plans
def plan_table(
    curves: PayCurves,
    mode: str,
    depth: int,
    floor_min: NDArray[np.float64],
    floor_max: NDArray[np.float64],
    first_shares: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Thompson sampling over whole plans: each draw's optimal waterfall (``mode =
    "waterfall"``, at most ``depth`` tiers) or auction (at most ``depth`` calls); identical
    plans merge. Returns tiers [P, N] (−1: not called), floors [P, N] (CPM) and probabilities
    [P] (the share of draws; rows past the distinct plans have probability 0), P = D.

    ``first_shares`` (min, max [N]) is the share contract. A waterfall's is on first-tier
    calls: each draw values every network as the first tier (:func:`waterfalls_led_by`), the
    first-tier shares are the posterior average of the contract-constrained optimum (as in
    the single mode), and the plans of first network j are the draws' best waterfalls led by
    j, sharing its share equally (P = N·D). An auction's is on calls — the share of requests
    on which network j is called: each draw's best mixture of auctions within it
    (:func:`contracted_auctions`), each auction weighted by its share of the draw (P = N·D
    rows, the most probable plans)."""
    d, n, _ = curves.shape
    rows = np.arange(d)
    if mode == "waterfall" and first_shares is not None:
        lo, hi = first_shares
        orders, floors, values = waterfalls_led_by(1.0 - curves.nofill, curves.revenue(), curves.allowed, depth)
        share = matched_shares(values, lo, hi)
        tiers = np.full((n, d, n), -1, dtype=np.int64)
        index = np.zeros((n, d, n), dtype=np.int64)
        for j in range(n):
            for t in range(orders.shape[2]):
                tiers[j, rows, orders[:, j, t]] = t
                index[j, rows, orders[:, j, t]] = floors[:, j, t]
        weights = np.repeat(share / d, d)
        return _merged(tiers.reshape(n * d, n), index.reshape(n * d, n), weights, floor_min, floor_max)
    tiers = np.full((d, n), -1, dtype=np.int64)
    index = np.zeros((d, n), dtype=np.int64)
    if mode == "waterfall":
        order, floors, _ = best_waterfall(1.0 - curves.nofill, curves.revenue(), curves.allowed, depth)
        for t in range(order.shape[1]):
            tiers[rows, order[:, t]] = t
            index[rows, order[:, t]] = floors[:, t]
    elif mode == "auction" and first_shares is not None:
        called, floors, weights = contracted_auctions(curves, depth, *first_shares)
        c = called.shape[1]
        tiers = np.where(called, 0, -1).reshape(d * c, n)
        index = np.where(called, floors, 0).reshape(d * c, n)
        out_t, out_f, probs = _merged(tiers, index, weights.ravel() / d, floor_min, floor_max)
        keep = np.argsort(-probs, kind="stable")[: n * d]  # a fixed P = N·D rows, as a waterfall's
        if len(probs) < n * d:
            pad = n * d - len(probs)
            return (
                np.vstack([out_t, np.full((pad, n), -1)]),
                np.vstack([out_f, np.zeros((pad, n))]),
                np.concatenate([probs, np.zeros(pad)]),
            )
        return out_t[keep], out_f[keep], probs[keep] / probs[keep].sum()
    elif mode == "auction":
        called, floors, _ = best_auction(curves, depth)
        tiers[called] = 0
        index = np.where(called, floors, 0)
    else:
        raise ValueError(f"no plans for mode {mode!r}")
    return _merged(tiers, index, np.full(d, 1.0 / d), floor_min, floor_max)


def _merged(
    tiers: NDArray[np.int64],
    index: NDArray[np.int64],
    weights: NDArray[np.float64],
    floor_min: NDArray[np.float64],
    floor_max: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Plans [P, N] with probabilities [P], identical ones merged (padded back to P rows)."""
    p, n = tiers.shape
    index = np.where(tiers >= 0, index, 0)
    _, first, inverse = np.unique(
        np.concatenate([tiers, index], axis=1), axis=0, return_index=True, return_inverse=True
    )
    mass = np.bincount(inverse.ravel(), weights=weights, minlength=len(first))
    cpm = np.where(tiers >= 0, floor_cpm(index, floor_min[None, :], floor_max[None, :]), 0.0)
    out_t = np.full((p, n), -1, dtype=np.int64)
    out_f = np.zeros((p, n))
    probs = np.zeros(p)
    out_t[: len(first)], out_f[: len(first)], probs[: len(first)] = tiers[first], cpm[first], mass
    return out_t, out_f, probs


def explored_plans(
    tiers: NDArray[np.int64],
    floors: NDArray[np.float64],
    probs: NDArray[np.float64],
    share: float,
    factors: Sequence[float],
    floor_min: NDArray[np.float64],
    floor_max: NDArray[np.float64],
    max_calls: int,
    rows: int = EXPLORED_PLANS,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Plans [P, N] (floors in CPM) with floor exploration: each of the ``rows`` most probable
    plans gives ``share`` of its probability, in equal parts, to its variants with one called
    network's floor times one of ``factors`` (clipped to the bounds). A variant keeps its
    plan's networks and order, so call and first-tier shares are unchanged; identical plans
    merge, so each probability is exactly its plan's. Returns P + rows·max_calls·len(factors)
    rows (a plan calls at most ``max_calls`` networks).

    Why: a network's bids below its floor are never seen, so its model extrapolates there;
    when the extrapolation is wrong, Thompson draws agree on it and nothing corrects it."""
    p, n = tiers.shape
    out_t, out_f, out_p = [tiers], [floors], [probs.copy()]
    for i in np.argsort(-probs, kind="stable")[:rows]:
        called = np.flatnonzero(tiers[i] >= 0)
        if share <= 0 or probs[i] <= 0 or not len(called):
            continue
        out_p[0][i] *= 1.0 - share
        variants = np.repeat(floors[i][None], len(called) * len(factors), axis=0)
        net = np.repeat(called, len(factors))
        lowered = floors[i, net] * np.tile(np.asarray(factors, dtype=np.float64), len(called))
        variants[np.arange(len(net)), net] = np.clip(lowered, floor_min[net], floor_max[net])
        out_t.append(np.repeat(tiers[i][None], len(net), axis=0))
        out_f.append(variants)
        out_p.append(np.full(len(net), probs[i] * share / len(net)))
    pad = p + rows * min(max_calls, n) * len(factors) - sum(len(t) for t in out_t)
    return merge_plans(
        np.concatenate([*out_t, np.full((pad, n), -1, dtype=np.int64)]),
        np.concatenate([*out_f, np.zeros((pad, n))]),
        np.concatenate([*out_p, np.zeros(pad)]),
    )


def plan_summary(
    tiers: NDArray[np.int64], floors: NDArray[np.float64], probs: NDArray[np.float64], summary: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-network weights [N] and summary [N, F] of a plan table for the single-network
    view of an allocation: a network's weight is its share of first calls (the first tier of
    a waterfall; for an auction its call probability, normalised), its ``floor_cpm`` (summary
    column 0) the probability-weighted mean floor of the plans calling it, and its p10 / p90
    (columns 1, 2) the weighted 10th and 90th percentiles of those floors. A network no plan
    calls keeps its own summary."""
    first = (tiers == 0) * probs[:, None]
    weights = first.sum(axis=0)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(tiers.shape[1], 1.0 / tiers.shape[1])
    summary = summary.copy()
    for j in range(tiers.shape[1]):
        rows = np.flatnonzero((tiers[:, j] >= 0) & (probs > 0))
        if len(rows):
            summary[j, 0] = float(np.average(floors[rows, j], weights=probs[rows]))
            order = rows[np.argsort(floors[rows, j], kind="stable")]
            summary[j, 1] = discrete_quantile(floors[order, j], probs[order], 0.1)
            summary[j, 2] = discrete_quantile(floors[order, j], probs[order], 0.9)
    return weights, summary
