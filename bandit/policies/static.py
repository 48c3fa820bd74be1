"""Static allocation: fixed weights and fixed floors, the way ad-ops configure networks by hand.

It still learns statistics (for reporting and off-policy evaluation) but never changes
its decisions; it is the control arm of A/B tests and the holdout of the live service.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import SegmentTable
from bandit.errors import InvalidConfig
from bandit.policies.common import empirical_summary, single_floor_table
from bandit.policy import Policy
from bandit.types import PlacementConfig


class StaticPolicy(Policy):
    """Fixed ``weights`` (default: equal, within share bounds) and ``floors`` per network id
    (default: each network's ``floor_min_cpm``)."""

    name = "static"

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        weights: Mapping[str, float] | None = None,
        floors: Mapping[str, float] | None = None,
        **kwargs,
    ) -> None:
        ids = placement.network_ids
        for label, given in (("weights", weights), ("floors", floors)):
            unknown = set(given or {}) - set(ids)
            if unknown:
                raise InvalidConfig(f"static {label} name unknown networks {sorted(unknown)}; known: {list(ids)}")
        raw = np.array([float((weights or {}).get(i, 1.0)) for i in ids])
        if not np.all(np.isfinite(raw)) or np.any(raw < 0) or raw.sum() <= 0:
            raise InvalidConfig("static weights must be finite, >= 0 and not all 0")
        self._floors = np.array(
            [n.clip_floor(float((floors or {}).get(n.id, n.floor_min_cpm))) for n in placement.networks]
        )
        self._raw = raw / raw.sum()
        super().__init__(
            placement,
            weights=dict(zip(ids, self._raw.tolist(), strict=True)),
            floors=dict(zip(ids, self._floors.tolist(), strict=True)),
            **kwargs,
        )

    def _build_table(self, segment: str, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> SegmentTable:
        weights = self._constrain(self._raw)
        return single_floor_table(weights, self._floors, empirical_summary(stats, self.placement, self._floors))
