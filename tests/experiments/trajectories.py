"""Synthetic trajectories with the columns of :func:`simulator.runner.run`, for fast tests."""

from __future__ import annotations

import numpy as np
import polars as pl


def synthetic(
    capture: np.ndarray, *, batch: int = 1000, oracle_rpr: float = 2.0, seed: int = 0, network_share: float = 0.25
) -> pl.DataFrame:
    """A trajectory whose row k has capture ``capture[k]`` (batch of ``batch`` requests), a
    ``network_share`` of its regret from the network choice and the rest from the floors."""
    rng = np.random.default_rng(seed)
    capture = np.asarray(capture, dtype=float)
    n = len(capture)
    oracle = np.full(n, oracle_rpr * batch)
    expected = capture * oracle
    total = batch * np.arange(1, n + 1)
    return pl.DataFrame(
        {
            "row": np.arange(n),
            "requests": np.full(n, batch),
            "requests_total": total,
            "fills": np.full(n, batch // 2),
            "revenue": expected * (1 + 0.01 * rng.standard_normal(n)),
            "expected_revenue": expected,
            "oracle_revenue": oracle,
            "network_best_revenue": oracle - network_share * (oracle - expected),
            "capture": capture,
            "cumulative_capture": np.cumsum(expected) / np.cumsum(oracle),
            "share_alpha": np.full(n, 0.4),
            "share_beta": np.full(n, 0.6),
            "floor_alpha": np.full(n, 1.0),
            "floor_beta": np.full(n, np.nan),
        }
    )
