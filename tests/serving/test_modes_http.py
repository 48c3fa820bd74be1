"""Waterfall and auction placements over HTTP: decisions with tiers / bidders, allocations
with plans, outcomes with responses expanded into per-network events (docs/service.md,
"Waterfall and auction placements")."""

from __future__ import annotations

import copy

import pytest

from tests.serving.conftest import P1_BODY, outcome

NETWORKS = [
    {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 20.0},
    {"id": "beta", "floor_min_cpm": 0.5, "floor_max_cpm": 20.0},
    {"id": "gamma", "floor_min_cpm": 0.0, "floor_max_cpm": 30.0},
]
WATERFALL = {"networks": NETWORKS, "segment_by": ["country"], "mode": "waterfall", "max_tiers": 2}
AUCTION = {"networks": NETWORKS, "segment_by": ["country"], "mode": "auction", "max_calls": 2}
SINGLE_KEYS = {"decision_id", "placement", "network", "floor_cpm", "propensity", "segment", "variant", "model_version"}
KR = {"country": "KR"}
TS = "2026-11-21T10:00:00Z"


@pytest.fixture
def modes(make_client):
    """A client with a waterfall ``wf``, an auction ``au`` and the single placement ``p1``."""
    client = make_client()
    assert client.put("/v1/placements/wf", json=WATERFALL).status_code == 201
    assert client.put("/v1/placements/au", json=AUCTION).status_code == 201
    assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    return client


def offers_of(decision: dict) -> list[dict]:
    return decision["tiers"] if decision["mode"] == "waterfall" else decision["bidders"]


def check_plan_decision(decision: dict, placement: str, mode: str, depth: int) -> None:
    key = "tiers" if mode == "waterfall" else "bidders"
    other = "bidders" if mode == "waterfall" else "tiers"
    assert decision["placement"] == placement and decision["mode"] == mode and other not in decision
    offers = decision[key]
    assert 1 <= len(offers) <= depth
    networks = [o["network"] for o in offers]
    assert len(set(networks)) == len(networks) and set(networks) <= {n["id"] for n in NETWORKS}
    bounds = {n["id"]: (n["floor_min_cpm"], n["floor_max_cpm"]) for n in NETWORKS}
    for o in offers:
        lo, hi = bounds[o["network"]]
        assert lo - 0.02 <= o["floor_cpm"] <= hi + 1e-6
    # Old clients read network/floor_cpm: the first tier (or bidder).
    assert (decision["network"], decision["floor_cpm"]) == (offers[0]["network"], offers[0]["floor_cpm"])
    assert 0.0 < decision["propensity"] <= 1.0


@pytest.mark.parametrize(("placement", "mode"), [("wf", "waterfall"), ("au", "auction")])
def test_decide_and_batch_answer_a_plan(modes, placement, mode):
    one = modes.post("/v1/decide", json={"placement": placement, "request_id": "r1", "context": KR})
    assert one.status_code == 200, one.text
    check_plan_decision(one.json(), placement, mode, 2)
    assert one.json()["segment"] == "KR"
    requests = [{"request_id": f"r{i}", "context": {"country": "KR" if i % 2 else "JP"}} for i in range(40)]
    batch = modes.post("/v1/decide/batch", json={"placement": placement, "requests": requests})
    assert batch.status_code == 200, batch.text
    decisions = batch.json()["decisions"]
    assert [d["segment"] for d in decisions] == ["KR" if i % 2 else "JP" for i in range(40)]
    for d in decisions:
        check_plan_decision(d, placement, mode, 2)
    assert len({d["decision_id"] for d in decisions}) == 40


def test_single_placements_answer_exactly_as_before(modes):
    one = modes.post("/v1/decide", json={"placement": "p1", "request_id": "r1", "context": {"country": "KR"}}).json()
    assert set(one) == SINGLE_KEYS
    batch = modes.post("/v1/decide/batch", json={"placement": "p1", "requests": [{"request_id": "a"}]}).json()
    assert set(batch["decisions"][0]) == SINGLE_KEYS
    allocation = modes.get("/v1/placements/p1/allocation").json()
    assert "mode" not in allocation and "plans" not in allocation
    assert "mode" not in modes.get("/v1/placements/p1").json()


@pytest.mark.parametrize(("placement", "mode"), [("wf", "waterfall"), ("au", "auction")])
def test_allocation_lists_the_most_probable_plans(modes, placement, mode):
    body = modes.get(f"/v1/placements/{placement}/allocation", params={"segment": "KR"}).json()
    assert body["mode"] == mode
    probs = [p["probability"] for p in body["plans"]]
    assert 1 <= len(probs) <= 10 and probs == sorted(probs, reverse=True)
    assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-9
    for plan in body["plans"]:
        assert 1 <= len(plan["offers"]) <= 2
        assert {"network", "floor_cpm"} == set(plan["offers"][0])
    weights = [n["weight"] for n in body["networks"]]
    assert [n["network"] for n in body["networks"]] == ["alpha", "beta", "gamma"]
    assert sum(weights) == pytest.approx(1.0)


def responses_for(decision: dict, winner: int | None = -1) -> list[dict]:
    """What the called networks answered: every offer but the last no-bid (a waterfall stops
    at its fill); the last bids 1 CPM over its floor and wins."""
    offers = offers_of(decision)
    out = [{"network": o["network"], "floor_cpm": o["floor_cpm"], "status": "no_bid"} for o in offers]
    if winner is not None:
        out[winner].update(status="bid", price_cpm=round(out[winner]["floor_cpm"] + 1.0, 4), won=True)
    return out


def multi_outcome(i: int, decision: dict, placement: str, **changes) -> dict:
    event = {
        "event_id": f"m{i}",
        "decision_id": decision["decision_id"],
        "ts": TS,
        "placement": placement,
        "context": KR,
        "responses": responses_for(decision),
    }
    event.update(changes)
    return event


def metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.mark.parametrize("placement", ["wf", "au"])
def test_outcomes_with_responses_are_expanded_verified_and_learned(modes, placement):
    requests = [{"request_id": f"r{i}", "context": KR} for i in range(30)]
    decisions = modes.post("/v1/decide/batch", json={"placement": placement, "requests": requests}).json()["decisions"]
    before = modes.get(f"/v1/placements/{placement}/allocation", params={"segment": "KR"}).json()
    events = [multi_outcome(i, d, placement) for i, d in enumerate(decisions)]
    reply = modes.post("/v1/outcomes", json=events).json()
    assert reply == {"accepted": 30, "duplicates": 0, "rejected": []}
    assert metric(modes, "adbandit_store_events_unverified_decision_total") == 0
    modes.app.state.store.flush()
    after = modes.get(f"/v1/placements/{placement}/allocation", params={"segment": "KR"}).json()
    # One per-network event per response: the learner counts them all.
    calls = sum(len(e["responses"]) for e in events)
    assert after["effective_events"] - before["effective_events"] == pytest.approx(calls)
    assert after["model_version"] != before["model_version"]
    # The per-network events are ordinary events "<event_id>/<network>": sent again, duplicates.
    again = modes.post("/v1/outcomes", json=events[:5]).json()
    assert again == {"accepted": 0, "duplicates": 5, "rejected": []}
    first = events[0]["responses"][0]["network"]
    single = {**outcome(0, placement=placement, network=first, filled=False, context=KR), "event_id": f"m0/{first}"}
    assert modes.post("/v1/outcomes", json=[single]).json()["duplicates"] == 1


def test_responses_off_the_plan_are_learned_without_propensities(modes):
    decision = modes.post("/v1/decide", json={"placement": "wf", "request_id": "r", "context": KR}).json()
    event = multi_outcome(0, decision, "wf")
    event["responses"][0]["floor_cpm"] = round(event["responses"][0]["floor_cpm"] + 5.0, 4)
    event["responses"][-1]["price_cpm"] = event["responses"][-1]["floor_cpm"] + 6.0
    assert modes.post("/v1/outcomes", json=[event]).json()["accepted"] == 1
    assert metric(modes, "adbandit_store_events_unverified_decision_total") == 1


def _no_price(e):
    e["responses"][-1].pop("price_cpm")


def _twice(e):
    e["responses"].append(dict(e["responses"][0]))


def _two_winners(e):
    e["responses"][0].update(status="bid", price_cpm=e["responses"][0]["floor_cpm"] + 1, won=True)


BAD = [
    ("empty", lambda e: e.update(responses=[]), "responses must be a non-empty array"),
    ("not a list", lambda e: e.update(responses={"network": "alpha"}), "responses must be a non-empty array"),
    ("unknown network", lambda e: e["responses"][0].update(network="zeta"), "'zeta' is not a network of placement"),
    ("twice", _twice, "appears twice"),
    ("bad status", lambda e: e["responses"][0].update(status="lost"), "status must be one of"),
    ("bid without price", _no_price, "status 'bid' needs price_cpm"),
    ("price on a no-bid", lambda e: e["responses"][0].update(price_cpm=1.0), "price_cpm is only for status 'bid'"),
    ("price below floor", lambda e: e["responses"][-1].update(price_cpm=0.0), "is below floor_cpm"),
    ("negative floor", lambda e: e["responses"][0].update(floor_cpm=-1), "floor_cpm must be a price"),
    ("won no bid", lambda e: e["responses"][0].update(won=True), "only a bid can win"),
    ("two winners", _two_winners, "more than one response has won"),
    ("won not bool", lambda e: e["responses"][-1].update(won="yes"), "won must be true or false"),
    ("missing status", lambda e: e["responses"][0].pop("status"), "missing required fields ['status']"),
    ("response field", lambda e: e["responses"][0].update(revenue_cpm=1), "unknown field(s) ['revenue_cpm']"),
    ("top-level field", lambda e: e.update(filled=True), "unknown field(s) ['filled']"),
    ("no ts", lambda e: e.pop("ts"), "missing required fields ['ts']"),
    ("future", lambda e: e.update(ts="2099-01-01T00:00:00Z"), "after the server's clock"),
    ("single placement", lambda e: e.update(placement="p1"), "placement 'p1' is single-network"),
    ("unknown placement", lambda e: e.update(placement="nope"), "'nope' does not exist"),
]


@pytest.mark.parametrize(("case", "change", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_responses_are_rejected_with_a_reason_and_nothing_accepted(modes, case, change, fragment):
    decision = modes.post("/v1/decide", json={"placement": "wf", "request_id": "r", "context": KR}).json()
    event = multi_outcome(0, decision, "wf")
    if len(event["responses"]) < 2:  # two tiers, so twice/two-winner cases have a second response
        event["responses"].insert(0, {"network": "alpha", "floor_cpm": 1.0, "status": "timeout"})
        if decision["tiers"][0]["network"] == "alpha":
            event["responses"][0]["network"] = "gamma"
    bad = copy.deepcopy(event)
    change(bad)
    good = {**event, "event_id": "ok"}
    reply = modes.post("/v1/outcomes", json=[bad, good]).json()
    assert reply["accepted"] == 1 and len(reply["rejected"]) == 1, reply
    assert reply["rejected"][0]["index"] == 0
    assert fragment in reply["rejected"][0]["error"]
    modes.app.state.store.flush()
    # Only the good event's responses were learned.
    learned = modes.get("/v1/placements/wf/allocation", params={"segment": "KR"}).json()["effective_events"]
    assert learned == pytest.approx(len(good["responses"]))


def test_a_plan_decision_id_on_a_single_shaped_event_is_not_trusted(modes):
    decision = modes.post("/v1/decide", json={"placement": "wf", "request_id": "r", "context": KR}).json()
    first = decision["tiers"][0]
    event = outcome(1, placement="wf", network=first["network"], floor=first["floor_cpm"], filled=False,
                    decision_id=decision["decision_id"], context=KR)  # fmt: skip
    assert modes.post("/v1/outcomes", json=[event]).json()["accepted"] == 1
    assert metric(modes, "adbandit_store_events_unverified_decision_total") == 1


def test_a_policy_that_cannot_plan_is_refused_with_a_422(modes, make_client):
    variants = {"variants": [{"name": "champion", "traffic": 90}, {"name": "hold", "traffic": 10, "policy": "static"}]}
    reply = modes.put("/v1/placements/wf/experiment", json=variants)
    assert reply.status_code == 422
    assert "policy 'static' cannot serve waterfall placements" in reply.json()["detail"]
    assert "ts_gmm" in reply.json()["detail"]
    static = make_client(default_policy="static", state_dir=modes.app.state.settings.state_dir.parent / "other")
    reply = static.put("/v1/placements/au", json=AUCTION)
    assert reply.status_code == 422 and "cannot serve auction placements" in reply.json()["detail"]
    assert static.put("/v1/placements/p1", json=P1_BODY).status_code == 201


def test_plans_and_their_decision_ids_survive_a_restart(make_client, tmp_path):
    first = make_client(state_dir=tmp_path / "s")
    assert first.put("/v1/placements/au", json=AUCTION).status_code == 201
    decision = first.post("/v1/decide", json={"placement": "au", "request_id": "r", "context": KR}).json()
    assert first.post("/v1/outcomes", json=[multi_outcome(0, decision, "au")]).json()["accepted"] == 1
    first.app.state.store.flush()
    before = first.get("/v1/placements/au/allocation", params={"segment": "KR"}).json()
    first.__exit__(None, None, None)
    again = make_client(state_dir=tmp_path / "s")
    after = again.get("/v1/placements/au/allocation", params={"segment": "KR"}).json()
    assert after["mode"] == "auction" and after["effective_events"] == before["effective_events"]
    check_plan_decision(
        again.post("/v1/decide", json={"placement": "au", "request_id": "r2", "context": KR}).json(), "au", "auction", 2
    )
    late = multi_outcome(1, decision, "au")  # decided before the restart
    assert again.post("/v1/outcomes", json=[late]).json()["accepted"] == 1
    assert metric(again, "adbandit_store_events_unverified_decision_total") == 0


def test_prebid_floors_of_an_auction_placement_are_its_plan_floors_per_bidder(make_client):
    """A Prebid page runs a parallel auction: each bidder's rule is the floor the auction
    optimisation gives its network (the plans' probability-weighted floor), not a floor
    averaged over networks as for single placements."""
    client = make_client()
    networks = [{**n, "bidder": f"b_{n['id']}"} for n in NETWORKS]
    body = {"networks": networks, "segment_by": ["country"], "mode": "auction"}
    assert client.put("/v1/placements/au", json=body).status_code == 201
    allocation = client.get("/v1/placements/au/allocation").json()
    floors = {n["network"]: n["floor_cpm"] for n in allocation["networks"]}
    assert len({round(f, 2) for f in floors.values()}) > 1  # the plans give networks different floors
    doc = client.get("/v1/prebid/floors", params={"placement": "au", "bidders": "true"})
    assert doc.status_code == 200, doc.text
    values = doc.json()["modelGroups"][0]["values"]
    for network, floor in floors.items():
        assert values[f"*|b_{network}"] == pytest.approx(floor, abs=0.01)


def test_the_allocation_never_lists_the_padding_of_a_plan_table():
    """Identical plans merge; the rows left over have probability 0 and are not plans."""
    import numpy as np

    from bandit.allocation import SegmentTable
    from serving.plans import top_plans

    n = len(NETWORKS)
    table = SegmentTable(
        np.full(n, 1 / n), np.ones((n, 1)), np.ones((n, 1)), np.ones((n, 1)), np.zeros((n, 8)),
        plan_tiers=np.array([[0, 1, -1], [1, 0, -1], [-1, -1, -1], [-1, -1, -1]]),
        plan_floors=np.array([[2.0, 1.0, 0.0], [1.5, 3.0, 0.0], [0.0] * 3, [0.0] * 3]),
        plan_probs=np.array([0.75, 0.25, 0.0, 0.0]),
    )  # fmt: skip
    plans = top_plans(table, [n["id"] for n in NETWORKS])
    assert [p["probability"] for p in plans] == [0.75, 0.25]
    assert [o["network"] for o in plans[1]["offers"]] == ["beta", "alpha"]


@pytest.mark.parametrize("placement", ["wf", "au"])
def test_the_experiment_report_counts_a_plan_outcome_as_one_request(make_client, placement):
    """A waterfall or auction decision is one request however many networks it called: the
    report's (and the console history's) requests are the outcomes sent and its revenue per
    request what the winner paid, not the sum of every bid over every per-network event (also
    after a restart's replay)."""
    modes = make_client(history_every_s=3600.0)
    assert modes.put("/v1/placements/wf", json=WATERFALL).status_code == 201
    assert modes.put("/v1/placements/au", json=AUCTION).status_code == 201
    requests = [{"request_id": f"r{i}", "context": KR} for i in range(12)]
    decisions = modes.post("/v1/decide/batch", json={"placement": placement, "requests": requests}).json()["decisions"]
    events, paid = [], []
    for i, d in enumerate(decisions):
        event = multi_outcome(i, d, placement)
        responses = event["responses"]
        if placement == "au" and len(responses) == 2:  # the loser bids too: evidence, not revenue
            responses[0].update(status="bid", price_cpm=round(responses[0]["floor_cpm"] + 0.5, 4))
        if i % 3 == 0:  # nothing filled
            for r in responses:
                r.update(status="no_bid")
                r.pop("price_cpm", None), r.pop("won", None)
        events.append(event)
        paid.append(next((r["price_cpm"] for r in responses if r.get("won")), 0.0))
    assert modes.post("/v1/outcomes", json=events).json()["accepted"] == 12
    # An ordinary per-network event of the same placement is a request of its own.
    single = outcome(99, placement=placement, network="alpha", floor=1.0, filled=True, revenue=2.0, context=KR)
    assert modes.post("/v1/outcomes", json=[single]).json()["accepted"] == 1
    modes.app.state.store.flush()
    expected = (sum(paid) + 2.0) / 13
    row = modes.get(f"/v1/placements/{placement}/experiment").json()["variants"]["champion"]
    assert row["requests"] == 13
    assert row["revenue_per_request"] == pytest.approx(expected)
    modes.app.state.store.record_history()
    point = modes.get(f"/v1/placements/{placement}/history").json()["points"][-1]
    assert point["requests"] == 13 and point["revenue_per_request"] == pytest.approx(expected)
    state_dir = modes.app.state.settings.state_dir
    modes.__exit__(None, None, None)
    again = make_client(state_dir=state_dir)
    row = again.get(f"/v1/placements/{placement}/experiment").json()["variants"]["champion"]
    assert row["requests"] == 13 and row["revenue_per_request"] == pytest.approx(expected)


def test_an_auction_call_share_contract_holds_over_many_decisions(make_client):
    """min_share/max_share of an auction placement are shares of requests calling the network:
    the served plans call beta on at least 70% of requests and alpha on at most 20%, before and
    after learning from outcomes, and the allocation says so."""
    client = make_client()
    networks = [{**NETWORKS[0], "max_share": 0.2}, {**NETWORKS[1], "min_share": 0.7}, NETWORKS[2]]
    body = {**AUCTION, "networks": networks}
    reply = client.put("/v1/placements/au", json=body)
    assert reply.status_code == 201, reply.text
    n = 3000

    def shares() -> dict[str, float]:
        requests = [{"request_id": f"r{i}", "context": KR} for i in range(n)]
        decisions = client.post("/v1/decide/batch", json={"placement": "au", "requests": requests}).json()["decisions"]
        for d in decisions:
            check_plan_decision(d, "au", "auction", 2)
        calls = {n["id"]: 0 for n in NETWORKS}
        for d in decisions:
            for o in d["bidders"]:
                calls[o["network"]] += 1
        return {k: v / n for k, v in calls.items()}, decisions

    got, decisions = shares()
    # Sampling error of 3,000 decisions: sd <= 0.009.
    assert got["beta"] >= 0.7 - 0.03 and got["alpha"] <= 0.2 + 0.03, got
    events = [multi_outcome(i, d, "au") for i, d in enumerate(decisions[:300])]
    assert client.post("/v1/outcomes", json=events).json()["accepted"] == 300
    client.app.state.store.flush()
    got, _ = shares()
    assert got["beta"] >= 0.7 - 0.03 and got["alpha"] <= 0.2 + 0.03, got
    plans = client.get("/v1/placements/au/allocation", params={"segment": "KR"}).json()["plans"]
    assert plans and sum(p["probability"] for p in plans) <= 1 + 1e-9


@pytest.mark.parametrize(("change", "fragment"), [
    ({"max_calls": 1, "shares": (0.7, 0.6, 0.0)}, "min_share of all networks sums to 1.3 > max_calls (1)"),
    ({"max_calls": 2, "shares": (0.9, 0.9, 0.9)}, "sums to 2.7 > max_calls (2)"),
    ({"max_calls": 2, "max": (0.3, 0.3, 0.3)}, "sums to 0.9 < 1 (every request calls at least one network)"),
    ({"max_calls": 2, "shares": (0.5, 0.0, 0.0), "max": (0.4, 1.0, 1.0)}, "max_share (0.4) must be >= min_share"),
])  # fmt: skip
def test_an_infeasible_auction_contract_is_a_422_saying_why(modes, change, fragment):
    networks = copy.deepcopy(NETWORKS)
    for n, share in zip(networks, change.get("shares", (0.0,) * 3), strict=True):
        n["min_share"] = share
    for n, share in zip(networks, change.get("max", (1.0,) * 3), strict=True):
        n["max_share"] = share
    reply = modes.put("/v1/placements/au2", json={**AUCTION, "networks": networks, "max_calls": change["max_calls"]})
    assert reply.status_code == 422, reply.text
    assert fragment in str(reply.json()["detail"]), reply.json()
    # Two networks each at least 60% of the calls fit an auction of 2 calls (not one of first calls).
    for n, share in zip(networks, (0.6, 0.6, 0.0), strict=True):
        n["min_share"], n["max_share"] = share, 1.0
    assert modes.put("/v1/placements/au2", json={**AUCTION, "networks": networks}).status_code == 201


def test_a_model_state_of_an_auction_is_checked_against_its_call_shares(make_client):
    """An auction's contract is on calls: a state whose plans keep it is accepted (its
    normalised weights need not lie in [min_share, max_share]); one whose plans break it is a 422."""
    import numpy as np

    from bandit import PlacementConfig, make_policy
    from tests.serving.test_api import npz_b64

    client = make_client()
    networks = [{**NETWORKS[0], "min_share": 0.9}, {**NETWORKS[1], "min_share": 0.8}, NETWORKS[2]]
    body = {**AUCTION, "networks": networks}
    assert client.put("/v1/placements/au", json=body).status_code == 201
    policy = make_policy("ts_gmm", PlacementConfig.from_dict("au", body), seed=3)
    policy.decide_plans(("KR",), np.zeros(1, dtype=np.int64), rng=np.random.default_rng(0))  # builds a table
    state = policy.state()
    reply = client.post("/v1/admin/placements/au/model", json={"state_npz_b64": npz_b64(state)})
    assert reply.status_code == 200, reply.text
    tiers = np.array(state["table_plan_tiers"])
    probs = np.zeros(state["table_plan_probs"].shape)
    tiers[:, 0], probs[:, 0] = [-1, 0, 0], 1.0  # every request on a plan that never calls alpha
    bad = {**state, "table_plan_probs": probs, "table_plan_tiers": tiers}
    reply = client.post("/v1/admin/placements/au/model", json={"state_npz_b64": npz_b64(bad)})
    assert reply.status_code == 422 and "call share" in reply.json()["detail"], reply.text
