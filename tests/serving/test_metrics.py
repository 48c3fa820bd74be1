"""/metrics follows Prometheus conventions, exports weights and floors per network, and the
Grafana dashboard in docs/grafana/ only uses metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.demo import DEMO_PLACEMENT
from tests.serving.conftest import P1_BODY, outcome

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "adbandit.json"


@pytest.fixture
def demo(make_client):
    """A service with the demo placement (learned from 3,000 events) and p1, after some traffic."""
    client = make_client(demo=True)
    client.put("/v1/placements/p1", json=P1_BODY)
    client.post("/v1/decide", json={"placement": "p1", "request_id": "r", "context": {"country": "KR", "os": "ios"}})
    client.post("/v1/outcomes", json=[outcome(i, revenue=1.0 + i) for i in range(4)] + [{"event_id": "bad"}])
    client.get("/v1/placements/p1/allocation?segmnet=typo")  # a 422, so error series exist
    for _ in range(200):
        if client.get("/v1/placements/p1/allocation").json()["effective_events"] >= 4:
            break
    assert client.post("/v1/admin/snapshot").status_code == 200  # snapshot age exists from the first snapshot on
    return client


def families(client) -> dict:
    return {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}


def samples(client) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in families(client).values():
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_counters_end_in_total_and_gauges_do_not(demo):
    found = families(demo)
    assert found
    for name, family in found.items():
        names = {s.name for s in family.samples}
        if family.type == "counter":
            assert {n for n in names if not n.endswith("_created")} == {f"{name}_total"}, name
        elif family.type == "gauge":
            assert not name.endswith("_total"), name
    for renamed in ("adbandit_placement_requests", "adbandit_variant_requests", "adbandit_placement_decisions"):
        assert found[renamed].type == "counter"


def test_revenue_per_request_is_computable_from_counters(demo):
    by_name = samples(demo)

    def value(name: str, **labels) -> float:
        (s,) = [s for s in by_name[name] if all(s.labels.get(k) == v for k, v in labels.items())]
        return s.value

    requests = value("adbandit_placement_requests_total", placement="p1")
    revenue = value("adbandit_placement_revenue_cpm_total", placement="p1")
    assert requests == 4 and revenue == pytest.approx(1 + 2 + 3 + 4)
    assert revenue / requests == pytest.approx(value("adbandit_placement_revenue_per_request_cpm", placement="p1"))
    assert value("adbandit_variant_requests_total", placement="p1", variant="champion") == 4
    (info,) = [s for s in by_name["adbandit_variant_info"] if s.labels["placement"] == "p1"]
    assert info.value == 1 and info.labels["model_version"].startswith("ts_gmm")


def test_weights_and_floors_per_placement_and_network(demo):
    by_name = samples(demo)
    for placement in ("p1", DEMO_PLACEMENT):
        allocation = demo.get(f"/v1/placements/{placement}/allocation").json()
        expected = {n["network"]: n for n in allocation["networks"]}
        for metric, field in (("adbandit_allocation_weight", "weight"), ("adbandit_allocation_floor_cpm", "floor_cpm")):
            rows = {s.labels["network"]: s.value for s in by_name[metric] if s.labels["placement"] == placement}
            assert rows.keys() == expected.keys(), metric
            for network, v in rows.items():
                assert v == pytest.approx(expected[network][field], rel=0.05, abs=0.01), (metric, network)
        weights = [s.value for s in by_name["adbandit_allocation_weight"] if s.labels["placement"] == placement]
        assert sum(weights) == pytest.approx(1.0, abs=1e-6)
    # Bounded cardinality: one series per (placement, network); no segment or variant label.
    for metric in ("adbandit_allocation_weight", "adbandit_allocation_floor_cpm", "adbandit_allocation_fill_rate"):
        assert len(by_name[metric]) == 2 + 3
        assert all(set(s.labels) == {"placement", "network"} for s in by_name[metric])


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    assert len(exprs) >= 10
    return {m for e in exprs for m in re.findall(r"\badbandit_[a-z0-9_]+", e)}


def test_the_grafana_dashboard_uses_only_exported_metrics(demo):
    exported = set(samples(demo))
    used = dashboard_metrics()
    assert {"adbandit_allocation_weight", "adbandit_allocation_floor_cpm", "adbandit_placement_revenue_cpm_total"} <= (
        used
    )
    assert sorted(used - exported) == []


def test_the_dashboard_rates_only_counters(demo):
    found = families(demo)
    counters = {f"{n}_total" for n, f in found.items() if f.type == "counter"}
    counters |= {f"{n}_bucket" for n, f in found.items() if f.type == "histogram"}
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"rate\((adbandit_[a-z0-9_]+)", target["expr"]):
                assert metric in counters, (panel["title"], metric)
