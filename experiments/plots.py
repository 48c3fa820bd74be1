"""PNG figures of simulation trajectories and learned allocations (matplotlib, Agg backend:
no display needed).

The trajectory functions take trajectories as returned by :func:`simulator.runner.run` (one
polars frame per seed, same schedule); :func:`allocation_by_segment` takes a policy. Each
returns a matplotlib Figure; the caller saves or logs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

_FIGSIZE = (8.0, 4.5)


def network_ids(trajectory: pl.DataFrame) -> list[str]:
    """Network ids from a trajectory's ``share_<network>`` columns, in placement order."""
    return [c.removeprefix("share_") for c in trajectory.columns if c.startswith("share_")]


def _x(trajectory: pl.DataFrame) -> np.ndarray:
    return trajectory["requests_total"].to_numpy()


def cumulative_revenue(trajectories: Sequence[pl.DataFrame], title: str = "") -> Any:
    """Cumulative expected revenue of the policy vs the oracle's on the same requests (CPM
    summed / 1000 = currency), mean over seeds."""
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    x = _x(trajectories[0])
    pol = np.mean([np.cumsum(t["expected_revenue"].to_numpy()) for t in trajectories], axis=0) / 1000
    orc = np.mean([np.cumsum(t["oracle_revenue"].to_numpy()) for t in trajectories], axis=0) / 1000
    real = np.mean([np.cumsum(t["revenue"].to_numpy()) for t in trajectories], axis=0) / 1000
    ax.plot(x, orc, color="black", linestyle="--", label="oracle")
    ax.plot(x, pol, label="policy (expected)")
    ax.plot(x, real, alpha=0.6, label="policy (realised)")
    ax.set_xlabel("requests")
    ax.set_ylabel("cumulative revenue (CPM/1000)")
    ax.set_title(title or "cumulative revenue vs oracle")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def capture_over_time(trajectories: Sequence[pl.DataFrame], title: str = "") -> Any:
    """Capture of each feedback batch (thin, one line per seed) and cumulative capture (mean)."""
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for t in trajectories:
        ax.plot(_x(t), t["capture"].to_numpy(), color="tab:blue", alpha=0.15, linewidth=0.8)
    x = _x(trajectories[0])
    ax.plot(
        x,
        np.nanmean([t["capture"].to_numpy() for t in trajectories], axis=0),
        label="capture (mean)",
    )
    cum = np.nanmean([t["cumulative_capture"].to_numpy() for t in trajectories], axis=0)
    ax.plot(x, cum, color="tab:orange", label="cumulative capture")
    return _capture_axes(fig, ax, title or "capture over time")


def _per_network(trajectories: Sequence[pl.DataFrame], prefix: str, ylabel: str, title: str, log: bool = False) -> Any:
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    x = _x(trajectories[0])
    for nid in network_ids(trajectories[0]):
        values = np.array([t[f"{prefix}{nid}"].to_numpy() for t in trajectories], dtype=float)
        if np.all(np.isnan(values)):
            continue
        with warnings.catch_warnings():  # steps where no seed sent traffic stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0)
        ax.plot(x, mean, label=nid)
    if log:  # floors span orders of magnitude; symlog keeps floors of 0 visible
        ax.set_yscale("symlog", linthresh=0.05)
    ax.set_xlabel("requests")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def weights_over_time(trajectories: Sequence[pl.DataFrame], title: str = "") -> Any:
    """Traffic share given to each network per feedback batch, mean over seeds."""
    return _per_network(trajectories, "share_", "traffic share", title or "weights per network")


def floors_over_time(trajectories: Sequence[pl.DataFrame], title: str = "") -> Any:
    """Mean floor (CPM) given to each network per feedback batch, mean over seeds."""
    return _per_network(trajectories, "floor_", "mean floor (CPM)", title or "floors per network", log=True)


def all_figures(trajectories: Sequence[pl.DataFrame], label: str = "") -> dict[str, Any]:
    """The four standard figures, keyed by their artifact file name."""
    suffix = f" — {label}" if label else ""
    return {
        "cumulative_revenue.png": cumulative_revenue(trajectories, f"cumulative revenue vs oracle{suffix}"),
        "capture.png": capture_over_time(trajectories, f"capture over time{suffix}"),
        "weights.png": weights_over_time(trajectories, f"weights per network{suffix}"),
        "floors.png": floors_over_time(trajectories, f"floors per network{suffix}"),
    }


def _capture_axes(fig: Any, ax: Any, title: str) -> Any:
    """Common frame of capture plots: the oracle (1.0) and 99% lines, labels, legend."""
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.axhline(0.99, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("requests")
    ax.set_ylabel("policy / oracle revenue")
    ax.set_ylim(0.0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def compare_capture(trajectories: Mapping[str, Sequence[pl.DataFrame]], title: str = "") -> Any:
    """Capture per feedback batch of several arms (mean over seeds), one line per arm."""
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for arm, ts in trajectories.items():
        length = min(t.height for t in ts)
        caps = np.array([t["capture"].to_numpy()[:length] for t in ts], dtype=float)
        ax.plot(_x(ts[0])[:length], np.nanmean(caps, axis=0), label=arm)
    return _capture_axes(fig, ax, title or "capture by arm")


def allocation_by_segment(policy: Any, top: int = 20, title: str = "") -> Any:
    """Weights (stacked bars) and floors (points, log scale) per network of the ``top``
    segments with the most (discounted) events, the placement level ``*`` first."""
    from bandit import ALL_SEGMENTS

    allocations = [policy.allocation(s) for s in policy.segments]
    allocations.sort(key=lambda a: -a.effective_events)
    shown = [policy.allocation(ALL_SEGMENTS), *allocations[:top]]
    labels = [a.segment for a in shown]
    x = np.arange(len(shown))
    fig, (top_ax, bottom_ax) = plt.subplots(2, 1, figsize=(_FIGSIZE[0], 1.5 * _FIGSIZE[1]), sharex=True)
    bottom = np.zeros(len(shown))
    for j, net in enumerate(policy.placement.network_ids):
        weights = np.array([a.networks[j].weight for a in shown])
        top_ax.bar(x, weights, bottom=bottom, label=net)
        bottom += weights
        floors = np.array([a.networks[j].floor_cpm for a in shown])
        bottom_ax.plot(x, np.maximum(floors, 1e-3), "o", label=net)
    top_ax.set_ylabel("exposure weight")
    top_ax.set_title(title or f"{policy.name} allocation by segment ({policy.model_version})")
    top_ax.legend(fontsize="small", ncol=4)
    bottom_ax.set_yscale("log")
    bottom_ax.set_ylabel("floor (CPM)")
    bottom_ax.set_xticks(x, labels, rotation=60, ha="right", fontsize="small")
    bottom_ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
