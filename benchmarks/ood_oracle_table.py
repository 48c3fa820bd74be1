"""Ground truth of the scenarios outside the policies' model (``ood_*``), for humans.

    PYTHONPATH=. .venv/bin/python benchmarks/ood_oracle_table.py [name ...] [--full]

Per scenario and segment prints the oracle revenue per request at the start (and, with
an hourly cycle, its traffic-weighted mean over a day and its range), the best network
and its lead over the runner-up (both at their best floors), and how many networks have
their best floor strictly inside their bounds. ``--full`` adds
:meth:`simulator.Market.oracle_table` (one row per segment and network).
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl

from simulator import Market, list_scenarios

SECONDS_PER_HOUR = 3600.0


def summary(market: Market, ts: float) -> list[dict]:
    """One row per segment: oracle revenue, best network, its lead, interior floors."""
    rows = []
    for s, seg in enumerate(market.segments):
        alloc = market.oracle_at(ts, s)
        order = np.argsort(-alloc.revenue)
        inside = 0
        for j, cfg in enumerate(market.placement.networks):
            f = alloc.floors[j]
            inside += int(cfg.floor_min_cpm * (1 + 1e-6) < f < cfg.floor_max_cpm * (1 - 1e-6))
        rows.append(
            {
                "segment": seg,
                "oracle_revenue_cpm": alloc.revenue_per_request,
                "best_network": market.placement.network_ids[order[0]],
                "lead_over_runner_up": float(alloc.revenue[order[0]] / alloc.revenue[order[1]] - 1)
                if len(order) > 1
                else float("nan"),
                "interior_floors": inside,
            }
        )
    return rows


def day_profile(market: Market) -> dict[str, float]:
    """Over the 24 hours of the first day: the traffic-weighted mean, min and max of the
    whole-placement oracle revenue, and the range of the best network's lead."""
    sc = market.scenario
    shares = np.array([s.share for s in sc.segments])
    traffic = np.array(sc.seasonality.traffic)
    per_hour, leads = [], []
    for h in range(24):
        ts = sc.start_ts + (h + 0.5) * SECONDS_PER_HOUR
        per_hour.append(sum(w * market.oracle_at(ts, s).revenue_per_request for s, w in enumerate(shares)))
        leads.extend(row["lead_over_runner_up"] for row in summary(market, ts))
    per_hour = np.array(per_hour)
    return {
        "mean": float(per_hour @ traffic / traffic.sum()),
        "min": float(per_hour.min()),
        "max": float(per_hour.max()),
        "lead_min": float(np.min(leads)),
        "lead_max": float(np.max(leads)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="scenario names (default: every ood_* scenario)")
    parser.add_argument("--full", action="store_true", help="also print the per-network oracle table")
    args = parser.parse_args()
    names = args.names or [n for n in list_scenarios() if n.startswith("ood_")]
    pl.Config.set_tbl_rows(100)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_float_precision(4)
    for name in names:
        market = Market(name)
        sc = market.scenario
        day = day_profile(market)
        seasonal = day["min"] < day["max"] * (1 - 1e-9)
        print(
            f"\n== {name}: {len(sc.networks)} networks, {len(sc.segments)} segment(s), "
            f"{sc.requests_per_hour:g} req/h, {sc.default_requests} requests, shock_sd {sc.shock_sd:g}"
        )
        mech = {n.id: ",".join(n.mechanisms) or "-" for n in sc.networks}
        print("   mechanisms: " + "; ".join(f"{k}: {v}" for k, v in mech.items()))
        if seasonal:
            print(
                f"   oracle revenue over the day: mean {day['mean']:.4f}, min {day['min']:.4f}, "
                f"max {day['max']:.4f} CPM/request; best network's lead {day['lead_min']:.1%}-{day['lead_max']:.1%}"
            )
        print(pl.DataFrame(summary(market, sc.start_ts)))
        if args.full:
            print(market.oracle_table().drop("segment_oracle_revenue_cpm"))


if __name__ == "__main__":
    main()
