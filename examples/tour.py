"""The README's five-minute tour, against a live service, with the Python client.

    make run                                   # in one terminal (serves the demo placement)
    .venv/bin/python examples/tour.py          # in another; --url URL, --api-key KEY

Creates placement p1 (examples/p1.json), asks for a decision, posts its outcome (twice: the
second is a duplicate), posts the outcome log examples/outcomes.ndjson, reads allocations and
Prebid floors, and starts a champion / challenger / holdout experiment on the demo placement
and reads its report. Each step prints one line; a failing step stops the tour with exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from serving.client import AdbanditClient, ServiceError

HERE = Path(__file__).resolve().parent
DEMO = "demo"


def tour(api: AdbanditClient) -> None:
    # 1. a placement: networks with floor bounds and traffic-share contracts, segments by country x os
    api.put_placement("p1", json.loads((HERE / "p1.json").read_text()))
    print("1. placement p1:", ", ".join(n["id"] for n in api.placement("p1")["networks"]))

    # 2. a decision: network, floor and the propensity that makes the logs usable off-line
    decision = api.decide("p1", "r1", {"country": "KR", "os": "ios"})
    print(f"2. decision: {decision.network} at floor {decision.floor_cpm:.2f} CPM "
          f"(P = {decision.propensity:.2f}, segment {decision.segment}, {decision.variant})")  # fmt: skip

    # 3. what happened; a repeated event_id counts once
    event = {
        "event_id": "tour-e1",
        "decision_id": decision.decision_id,
        "ts": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "placement": "p1",
        "network": decision.network,
        "floor_cpm": decision.floor_cpm,
        "filled": True,
        "revenue_cpm": round(decision.floor_cpm + 0.68, 2),
        "context": {"country": "KR", "os": "ios"},
    }
    first = api.post_outcomes([event])
    again = api.post_outcomes([event])
    if again.accepted != 0 or again.duplicates != 1 or first.rejected:
        raise SystemExit(f"tour: the outcome was not de-duplicated: {first}, then {again}")
    print(f"3. outcome: accepted {first.accepted}, duplicates {first.duplicates}; sent again: duplicate")

    #    ... or a log of them (adbandit ingest examples/outcomes.ndjson --url URL does the same in batches)
    lines = (HERE / "outcomes.ndjson").read_text().splitlines()
    logged = api.post_outcomes([json.loads(line) for line in lines if line.strip()])
    if logged.rejected:
        raise SystemExit(f"tour: outcomes.ndjson rows rejected: {logged.rejected[:3]}")
    print(f"   outcomes.ndjson: accepted {logged.accepted}, duplicates {logged.duplicates}")

    # 4. the learned allocation (weights, floors, their uncertainty) and Prebid floors
    placement = DEMO if api.placement(DEMO) is not None else "p1"
    allocation = api.allocation(placement, segment="KR|ios")
    shares = ", ".join(f"{n.network} {n.weight:.0%} @ {n.floor_cpm:.2f}" for n in allocation.networks)
    print(f"4. allocation of {placement} KR|ios ({allocation.effective_events:,.0f} events): {shares}")
    floors = api.prebid_floors(placement)
    print(f"   Prebid floors: schema {floors['floorsSchemaVersion']}, "
          f"{sum(len(g['values']) for g in floors['modelGroups'])} rules")  # fmt: skip

    # 5. champion / challenger / holdout on live traffic, and its report
    api.set_experiment(
        placement,
        [
            {"name": "champion", "traffic": 80, "policy": "ts_gmm"},
            {"name": "challenger", "traffic": 15, "policy": "grid_ts"},
            {"name": "holdout", "traffic": 5, "policy": "static"},
        ],
    )
    report = api.experiment_report(placement)
    print(f"5. experiment on {placement}: " + ", ".join(
        f"{name} {row['traffic']:g}% ({row['requests']} requests)" for name, row in report["variants"].items()
    ))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("ADBANDIT_API_KEY"), help="default: env ADBANDIT_API_KEY")
    args = parser.parse_args(argv)
    try:
        with AdbanditClient(args.url, args.api_key, attempts=3) as api:
            tour(api)
    except ServiceError as exc:
        print(f"tour: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
