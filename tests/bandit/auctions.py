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
    shock_sd: float = 0.0,
    dispersion: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(filled [n], revenue_cpm [n]) for Poisson(lam) bidders with log-normal-mixture values;
    per request, optionally, all values × e^z with z ~ N(0, ``shock_sd``²) and the bidder
    rate lam × a Gamma factor of mean 1 and variance ``dispersion`` (negative-binomial counts)."""
    n = len(floors)
    rate = lam * rng.gamma(1.0 / dispersion, dispersion, n) if dispersion > 0 else lam
    k = rng.poisson(rate, n)
    width = max(int(k.max(initial=0)), 2)
    comp = rng.choice(len(pi), size=(n, width), p=pi)
    values = np.exp(rng.normal(np.asarray(mu)[comp], np.asarray(sd)[comp]))
    values *= np.exp(shock_sd * rng.standard_normal(n))[:, None]
    values[np.arange(width)[None, :] >= k[:, None]] = 0.0
    values.sort(axis=1)
    top, second = values[:, -1], values[:, -2]
    filled = (k > 0) & (top >= floors)
    price = np.maximum(second, floors) if second_price else top
    return filled, np.where(filled, price, 0.0)
