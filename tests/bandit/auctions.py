"""Brute-force auction sampler for tests: draws every bidder explicitly (independent of
the simulator's inverse-CDF sampler and of the model's closed forms)."""

from __future__ import annotations

import numpy as np


def sample_auctions(
    rng: np.random.Generator,
    floors: np.ndarray,
    lam: float,
    pi: list[float],
    mu: list[float],
    sd: list[float],
    second_price: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(filled [n], revenue_cpm [n]) for Poisson(lam) bidders with log-normal-mixture values."""
    n = len(floors)
    k = rng.poisson(lam, n)
    width = max(int(k.max(initial=0)), 2)
    comp = rng.choice(len(pi), size=(n, width), p=pi)
    values = np.exp(rng.normal(np.asarray(mu)[comp], np.asarray(sd)[comp]))
    values[np.arange(width)[None, :] >= k[:, None]] = 0.0
    values.sort(axis=1)
    top, second = values[:, -1], values[:, -2]
    filled = (k > 0) & (top >= floors)
    price = np.maximum(second, floors) if second_price else top
    return filled, np.where(filled, price, 0.0)
