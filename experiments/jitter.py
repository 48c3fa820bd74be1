"""A wrapper that gives any policy continuous floors: its floors times a log-normal jitter.

:class:`JitteredPolicy` decides from the wrapped policy's tables with ``floor_log_sd`` [N]
and ``floor_bounds`` [N, 2] (log CPM) set (see :class:`bandit.allocation.SegmentTable`):
a decision's floor is ``exp(log f_m + sd · z)`` with ``z`` a standard normal truncated so
the floor stays inside the bounds, and every decision carries the density of its log
floor. Uses: a logging policy whose logs support kernel off-policy evaluation of nearby
floors (:mod:`experiments.ope`), and a candidate "policy X with floor exploration".

The wrapped policy keeps learning through :meth:`JitteredPolicy.update`; the wrapper holds
no statistics of its own, so it has no state of its own to save either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bandit.allocation import SegmentTable
from bandit.errors import InvalidConfig, InvalidState
from bandit.policy import Policy
from bandit.stats import PRICE_MIN
from bandit.types import ALL_SEGMENTS, MAX_CPM, Allocation


def default_floor_bounds(policy: Policy) -> NDArray[np.float64]:
    """Per network [N, 2]: log of the placement's floor range, floor_min_cpm of 0 read as
    ``PRICE_MIN`` (a log-normal jitter cannot reach 0)."""
    nets = policy.placement.networks
    lo = [math.log(max(n.floor_min_cpm, PRICE_MIN)) for n in nets]
    hi = [math.log(min(max(n.floor_max_cpm, PRICE_MIN), MAX_CPM)) for n in nets]
    return np.column_stack([lo, hi])


class JitteredPolicy(Policy):
    """``base``'s decisions with each network's floor jittered by ``floor_log_sd`` (scalar or
    [N], log CPM; 0 leaves a network's floors discrete) inside ``floor_bounds`` [N, 2]
    (log CPM; default :func:`default_floor_bounds`)."""

    name = "jittered"

    def __init__(
        self,
        base: Policy,
        floor_log_sd: float | ArrayLike,
        *,
        floor_bounds: ArrayLike | None = None,
        seed: int | None = None,
    ) -> None:
        n = len(base.placement.networks)
        sd = np.array(np.broadcast_to(np.asarray(floor_log_sd, dtype=np.float64), (n,)))
        if not np.all(np.isfinite(sd) & (sd >= 0)):
            raise InvalidConfig(f"floor_log_sd must be finite and >= 0, got {sd.tolist()}")
        bounds = default_floor_bounds(base) if floor_bounds is None else np.asarray(floor_bounds, dtype=np.float64)
        if bounds.shape != (n, 2) or np.isnan(bounds).any() or np.any(bounds[:, 0] >= bounds[:, 1]):
            raise InvalidConfig(f"floor_bounds must be [{n}, 2] log CPM with low < high")
        self.base = base
        self.floor_log_sd = sd
        self.floor_bounds = bounds
        self._cache: dict[str, tuple[SegmentTable, SegmentTable]] = {}
        self._ready = False
        super().__init__(base.placement, seed=seed)
        self._ready = True

    def jitter(self, table: SegmentTable) -> SegmentTable:
        """``table`` with this wrapper's jitter; jittered networks' candidate floors are
        clipped into the bounds (a floor of 0 has no log)."""
        floors = table.floors.copy()
        jit = self.floor_log_sd > 0
        lo, hi = np.exp(self.floor_bounds[:, :1]), np.exp(self.floor_bounds[:, 1:])
        floors[jit] = np.clip(floors, lo, hi)[jit]
        jittered = SegmentTable(
            table.weights,
            floors,
            table.floor_probs,
            table.floor_propensity,
            table.summary,
            floor_log_sd=self.floor_log_sd,
            floor_bounds=self.floor_bounds,
        )
        return self._finish(jittered)  # draws rounded to the placement's floor precision

    def table(self, segment: str) -> SegmentTable:
        base = self.base.table(segment)
        got = self._cache.get(segment)
        if got is None or got[0] is not base:  # the base rebuilt its table: jitter the new one
            got = (base, self.jitter(base))
            self._cache[segment] = got
        return got[1]

    def _build_table(self, segment: str, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> SegmentTable:
        return self.table(segment)

    def update(self, events: Any, *, refresh: bool = True) -> list[str]:
        """The base policy learns; the wrapper's tables follow it."""
        return self.base.update(events, refresh=refresh)

    def refresh(self, segments: Sequence[str] = ()) -> None:
        if self._ready:  # Policy.__init__ refreshes too: leave the base alone then
            self.base.refresh(segments)

    @property
    def model_version(self) -> str:
        return f"{self.base.model_version}+jitter"

    @property
    def segments(self) -> list[str]:
        return self.base.segments

    def allocation(self, segment: str = ALL_SEGMENTS) -> Allocation:
        return self.base.allocation(segment)

    def state(self) -> dict[str, np.ndarray]:
        raise InvalidState("a jittered policy is an evaluation wrapper: save its base policy's state")
