"""The oracle: the best allocation of a placement knowing the true revenue curves.

Per network the best floor maximises R(f) within its floor bounds (grid search on a
log grid, then bounded Brent refinement). Weights then solve a linear programme: with
only min/max shares the solution is greedy (fill every minimum, then give what is left
to the networks in order of their best revenue, up to their maximum); with hourly demand
caps the segments are coupled through the caps and :func:`scipy.optimize.linprog` solves
over (segment, network, candidate floor) columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linprog, minimize_scalar

from bandit.types import PlacementConfig

#: Floors tried per network before refinement.
FLOOR_GRID = 768
#: Extra candidate floors per capped network in the capped LP.
CAP_CANDIDATES = 24

Curve = Callable[[NDArray[np.float64]], tuple[NDArray[np.float64], NDArray[np.float64]]]


@dataclass(frozen=True, slots=True)
class OracleAllocation:
    """The oracle's allocation of one segment in one regime, arrays [N] over networks.

    ``floors`` is the floor per network (traffic-weighted when the capped LP mixes
    floors), ``revenue`` and ``fill`` the expected revenue per request and fill rate of the
    traffic the network gets, ``revenue_per_request`` = Σ weights · revenue.
    """

    weights: NDArray[np.float64]
    floors: NDArray[np.float64]
    revenue: NDArray[np.float64]
    fill: NDArray[np.float64]
    revenue_per_request: float

    def to_dict(self, network_ids: Sequence[str]) -> dict:
        return {
            "revenue_per_request": self.revenue_per_request,
            "networks": [
                {
                    "network": nid,
                    "weight": float(w),
                    "floor_cpm": float(f),
                    "revenue_cpm": float(r),
                    "fill_rate": float(p),
                }
                for nid, w, f, r, p in zip(network_ids, self.weights, self.floors, self.revenue, self.fill, strict=True)
            ],
        }


def floor_candidates(lo: float, hi: float, n: int = FLOOR_GRID) -> NDArray[np.float64]:
    """Sorted floors [≤ n+2] covering [lo, hi]: the bounds and a log-spaced grid between."""
    if hi <= lo:
        return np.array([lo])
    start = max(lo, 1e-3)
    grid = np.geomspace(start, hi, n) if start < hi else np.array([hi])
    return np.unique(np.concatenate([[lo], grid, [hi]]))


def best_floor(curve: Curve, lo: float, hi: float) -> tuple[float, float, float]:
    """(floor, R(floor), P(fill | floor)) maximising R within [lo, hi]."""
    cands = floor_candidates(lo, hi)
    rev, fill = curve(cands)
    # The lowest floor within rounding of the maximum: below the bids' support R is flat
    # (and for a first-price network R only falls), so ties resolve to the lower floor.
    k = int(np.flatnonzero(rev >= rev.max() * (1.0 - 1e-12))[0])
    best_f, best_r, best_p = float(cands[k]), float(rev[k]), float(fill[k])
    if len(cands) > 2 and 0 < k < len(cands) - 1:
        a, b = float(cands[max(k - 1, 0)]), float(cands[min(k + 1, len(cands) - 1)])
        res = minimize_scalar(
            lambda f: -float(curve(np.array([f]))[0][0]),
            bounds=(a, b),
            method="bounded",
            options={"xatol": 1e-7 * max(b, 1e-3)},
        )
        if res.success and -res.fun > best_r * (1.0 + 1e-12):
            r, p = curve(np.array([res.x]))
            best_f, best_r, best_p = float(res.x), float(r[0]), float(p[0])
    return best_f, best_r, best_p


def share_allocation(
    floors: NDArray[np.float64],
    revenue: NDArray[np.float64],
    fill: NDArray[np.float64],
    placement: PlacementConfig,
) -> OracleAllocation:
    """Best weights [N] under the min/max share contract, networks at their best floors.

    The LP max Σ w·R s.t. Σ w = 1, lo ≤ w ≤ hi is solved exactly by the greedy rule.
    """
    lo = np.array([n.min_share for n in placement.networks])
    hi = np.array([n.max_share for n in placement.networks])
    w = lo.copy()
    left = 1.0 - w.sum()
    for j in np.argsort(-revenue, kind="stable"):
        add = min(hi[j] - w[j], left)
        w[j] += add
        left -= add
        if left <= 0:
            break
    return OracleAllocation(
        w,
        np.asarray(floors, float),
        np.asarray(revenue, float),
        np.asarray(fill, float),
        float(w @ revenue),
    )


def constrained_allocation(
    per_segment: Sequence[Sequence[tuple[Curve, tuple[float, float, float]]]],
    shares: NDArray[np.float64],
    requests_per_hour: float,
    caps: NDArray[np.float64],
    placement: PlacementConfig,
    floor_hi: NDArray[np.float64],
) -> list[OracleAllocation]:
    """Best allocation of every segment when networks have hourly fill caps.

    ``per_segment[s][j]`` is (revenue curve, its best floor triple). Columns are
    (segment, network, floor) for the best floor and, for capped networks, higher floors
    (fewer fills, more revenue per fill) plus a "blocked" column (traffic past the cap,
    earning nothing) so a min share stays feasible. Constraints: weights of a segment sum
    to 1; min/max shares per segment; Σ_s traffic·share_s·w·fill ≤ cap per network.
    """
    n_seg, n_net = len(per_segment), len(placement.networks)
    cols: list[tuple[int, int, float, float, float]] = []  # (segment, network, floor, R, fill)
    for s in range(n_seg):
        for j in range(n_net):
            curve, (f_best, r_best, p_best) = per_segment[s][j]
            cols.append((s, j, f_best, r_best, p_best))
            if np.isfinite(caps[j]):
                if floor_hi[j] > f_best:
                    higher = np.geomspace(max(f_best, 1e-3), floor_hi[j], CAP_CANDIDATES + 1)[1:]
                    rev, fill = curve(higher)
                    cols.extend((s, j, float(f), float(r), float(p)) for f, r, p in zip(higher, rev, fill, strict=True))
                cols.append((s, j, f_best, 0.0, 0.0))
    seg = np.array([c[0] for c in cols])
    net = np.array([c[1] for c in cols])
    flo = np.array([c[2] for c in cols])
    rev = np.array([c[3] for c in cols])
    fil = np.array([c[4] for c in cols])
    cost = -shares[seg] * rev
    a_eq = (seg[None, :] == np.arange(n_seg)[:, None]).astype(float)
    rows, rhs = [], []
    for s in range(n_seg):
        for j, cfg in enumerate(placement.networks):
            mask = ((seg == s) & (net == j)).astype(float)
            if cfg.min_share > 0:
                rows.append(-mask)
                rhs.append(-cfg.min_share)
            if cfg.max_share < 1:
                rows.append(mask)
                rhs.append(cfg.max_share)
    for j in np.flatnonzero(np.isfinite(caps)):
        rows.append(np.where(net == j, requests_per_hour * shares[seg] * fil, 0.0))
        rhs.append(float(caps[j]))
    res = linprog(
        cost,
        A_ub=np.array(rows) if rows else None,
        b_ub=np.array(rhs) if rhs else None,
        A_eq=a_eq,
        b_eq=np.ones(n_seg),
        bounds=(0, None),
        method="highs",
    )
    if not res.success:  # pragma: no cover - the blocked columns keep it feasible
        raise RuntimeError(f"oracle LP failed: {res.message}")
    x = np.clip(res.x, 0.0, None)
    out = []
    for s in range(n_seg):
        w = np.zeros(n_net)
        floors, revenue, fill = np.zeros(n_net), np.zeros(n_net), np.zeros(n_net)
        for j in range(n_net):
            m = (seg == s) & (net == j)
            w[j] = x[m].sum()
            earning = m & (rev > 0)
            if w[j] > 1e-12:
                revenue[j] = float(x[m] @ rev[m]) / w[j]
                fill[j] = float(x[m] @ fil[m]) / w[j]
                ew = x[earning].sum()
                floors[j] = float(x[earning] @ flo[earning]) / ew if ew > 1e-12 else per_segment[s][j][1][0]
            else:
                f_best, r_best, p_best = per_segment[s][j][1]
                floors[j], revenue[j], fill[j] = f_best, r_best, p_best
        out.append(OracleAllocation(w, floors, revenue, fill, float(x[seg == s] @ rev[seg == s])))
    return out
