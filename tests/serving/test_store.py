"""PolicyStore: placements, mixed batches, snapshot + replay, crashes, A/B variants, swaps, ingest."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import numpy as np
import polars as pl
import pytest

from bandit import POLICIES, PlacementConfig, make_policy
from bandit.abstats import unpaired_lift, unpaired_msprt_p_value
from bandit.errors import (
    AdbanditError,
    InvalidConfig,
    InvalidDecisionRequest,
    InvalidState,
    UnknownPlacement,
)
from bandit.stats import FIELDS
from serving import eventlog
from serving.ingest import IngestFailed, ingest_files
from serving.store import ExperimentConfig, IngestResult, PolicyStore, VariantConfig

T0 = 1_790_000_000.0
STATS_KEYS = ("stats_floor_values", "stats_price_values", "stats_totals", "stats_segments", "stats_t_ref")


def placement(pid: str = "p1", networks=("alpha", "beta", "house"), **kw) -> PlacementConfig:
    body = {"networks": [{"id": n, "floor_max_cpm": 20.0} for n in networks], "segment_by": ["country", "os"]}
    body.update(kw)
    return PlacementConfig.from_dict(pid, body)


def ab(policy: str = "static", **params) -> ExperimentConfig:
    return ExperimentConfig(
        (
            VariantConfig("champion", 80, policy, params),
            VariantConfig("challenger", 15, policy, params),
            VariantConfig("holdout", 5, "static"),
        )
    )


def open_store(path, **kw) -> PolicyStore:
    kw.setdefault("default_policy", "static")
    # Replays learn the live groups one by one: bit-for-bit what the store that never stopped
    # learned (merged replay groups: test_replay_merging_live_groups_...).
    kw.setdefault("replay_group_events", 0)
    store = PolicyStore(path, **kw)
    store.open()
    return store


def crash_copy(src, dst) -> None:
    """What a crash leaves behind: the directory as it is now, without a clean close."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("LOCK"))


def events(rng: np.random.Generator, n: int, start: int, *, pid="p1", networks=("alpha", "beta", "house"),
           decision_ids=None, t0=T0, decisions=None) -> list[dict]:  # fmt: skip
    """Random valid outcome events with distinct ids ``e<start>..`` (answering ``decisions``,
    with their ids, networks and floors, when given)."""
    out = []
    for i in range(n):
        floor = float(np.round(rng.uniform(0, 4), 2))
        filled = bool(rng.random() < 0.6)
        body = {
            "event_id": f"e{start + i}",
            "ts": t0 + start + i,
            "placement": pid,
            "network": networks[int(rng.integers(len(networks)))],
            "floor_cpm": floor,
            "filled": filled,
            "revenue_cpm": float(floor + rng.exponential(1.5)) if filled else 0.0,
            "context": {"country": ["KR", "US", "JP"][int(rng.integers(3))], "os": ["ios", "android"][i % 2]},
        }
        if decision_ids is not None:
            body["decision_id"] = decision_ids[i % len(decision_ids)]
        if decisions is not None:
            d = decisions[i % len(decisions)]
            body.update(decision_id=d.decision_id, network=d.network, floor_cpm=d.floor_cpm)
            if filled:
                body["revenue_cpm"] = float(d.floor_cpm + rng.exponential(1.5))
        out.append(body)
    return out


def stats(store: PolicyStore, pid: str = "p1", variant: str = "champion") -> dict[str, np.ndarray]:
    state = store.policy_state(pid, variant)
    return {k: state[k] for k in STATS_KEYS} | {"updates": json.loads(str(state["meta"]))["updates"]}


def assert_same_stats(a: dict, b: dict) -> None:
    assert a["updates"] == b["updates"]
    for key in STATS_KEYS:
        assert a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), f"{key} differs"


# ------------------------------------------------------------------ placements
def test_put_get_list_placements(tmp_path):
    store = open_store(tmp_path)
    assert store.put_placement(placement("b")) is True
    assert store.put_placement(placement("a")) is True
    assert store.put_placement(placement("a")) is False
    assert [p.id for p in store.list_placements()] == ["a", "b"]
    assert store.get_placement("a") == placement("a")
    assert store.get_experiment("a") == ExperimentConfig.single("static")
    for call in (
        lambda: store.get_placement("zz"),
        lambda: store.decide("zz", "r1", {}),
        lambda: store.allocation("zz"),
        lambda: store.experiment_report("zz"),
    ):
        with pytest.raises(UnknownPlacement, match="'zz'"):
            call()
    store.close()
    store = open_store(tmp_path)
    assert [p.id for p in store.list_placements()] == ["a", "b"]
    store.close()


def test_new_placement_uses_the_store_default_policy(tmp_path):
    store = open_store(tmp_path, default_policy="static", default_params={"floors": {"alpha": 3.0}})
    store.put_placement(placement())
    (variant,) = store.get_experiment("p1").variants
    assert (variant.name, variant.policy, variant.params) == ("champion", "static", {"floors": {"alpha": 3.0}})
    store.close()


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([("champion", 60), ("challenger", 30)], "sum to 100"),
        ([("champion", 50), ("champion", 50)], "unique"),
        ([("champion", 100, "no_such_policy")], "unknown policy"),
        ([("champ.ion", 100)], "variant name"),
        ([("champion", 120), ("x", -20)], r"\[0, 100\]"),
        ([], "at least one variant"),
    ],
)
def test_experiment_config_rejects_bad_input(variants, message):
    with pytest.raises(InvalidConfig, match=message):
        ExperimentConfig(tuple(VariantConfig(*(v if len(v) == 3 else (*v, "static"))) for v in variants))


def test_experiment_config_round_trips_through_dicts():
    exp = ab(weights={"alpha": 2.0})
    assert ExperimentConfig.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    assert exp.champion == "champion"
    assert ExperimentConfig((VariantConfig("a", 50, "static"), VariantConfig("b", 50, "static"))).champion == "a"


def test_bad_policy_params_change_nothing(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    lsn = store.metrics()["log_last_lsn"]
    bad = ExperimentConfig((VariantConfig("champion", 100, "static", {"weights": {"nope": 1.0}}),))
    with pytest.raises(InvalidConfig, match="nope"):
        store.set_experiment("p1", bad)
    assert store.get_experiment("p1") == ExperimentConfig.single("static")
    assert store.metrics()["log_last_lsn"] == lsn
    store.close()


# ----------------------------------------------------------------- mixed batches
GOOD = {
    "event_id": "g",
    "ts": "2026-11-21T10:00:00Z",
    "placement": "p1",
    "network": "alpha",
    "floor_cpm": 1.0,
    "filled": True,
    "revenue_cpm": 2.0,
    "context": {"country": "KR", "os": "ios"},
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"placement": "nope"}, "placement 'nope' does not exist"),
        ({"network": "zzz"}, "network 'zzz' is not configured"),
        ({"filled": False, "revenue_cpm": 1.0}, "revenue_cpm must be 0 when filled is false"),
        ({"revenue_cpm": -1.0}, "revenue_cpm must be >= 0"),
        ({"revenue_cpm": 5000.0}, "revenue_cpm must be <="),
        ({"floor_cpm": "cheap"}, "floor_cpm must be a number"),
        ({"ts": "yesterday"}, "ts must be an ISO 8601"),
        ({"filled": "yes"}, "filled must be true or false"),
        ({"event_id": ""}, "event_id"),
        ({"decision_id": 17}, "decision_id must be a string"),
        ({"context": "KR"}, "context must be an object"),
        (None, "must be a JSON object"),
    ],
)
def test_mixed_batch_rejects_each_bad_event_with_its_reason(tmp_path, change, reason):
    store = open_store(tmp_path)
    store.put_placement(placement())
    bad = None if change is None else {**GOOD, "event_id": "b", **change}
    if change is not None and "event_id" in change:
        bad["event_id"] = change["event_id"]
    batch = [{**GOOD, "event_id": "g1"}, bad, {**GOOD, "event_id": "g2"}]
    result = store.ingest(batch)
    assert result.accepted == 2 and result.duplicates == 0
    assert [i for i, _ in result.rejected] == [1]
    assert reason in result.rejected[0][1]
    store.flush()
    assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 2
    store.close()


def test_missing_fields_are_named(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    result = store.ingest([{"event_id": "x", "placement": "p1"}])
    assert result.rejected == [(0, "missing required fields ['network', 'floor_cpm', 'filled', 'ts']")]
    store.close()


def test_rejected_events_change_no_state(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(0), 50, 0))
    store.flush()
    before, lsn, report = stats(store), store.metrics()["log_last_lsn"], store.experiment_report("p1")
    result = store.ingest([{**GOOD, "network": "zzz"}, {**GOOD, "placement": "q"}, {"x": 1}])
    store.flush()
    assert result == IngestResult(0, 0, result.rejected) and len(result.rejected) == 3
    assert_same_stats(before, stats(store))
    assert store.metrics()["log_last_lsn"] == lsn
    assert store.experiment_report("p1") == report
    # and their ids stay free
    assert store.ingest([{**GOOD, "event_id": "zzz"}]).accepted == 1
    store.close()


def test_floor_outside_the_configured_bounds_is_accepted(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    result = store.ingest([{**GOOD, "floor_cpm": 45.0, "revenue_cpm": 46.0}])  # floor_max_cpm is 20
    assert result.accepted == 1 and not result.rejected
    store.close()


def test_ingest_applies_in_the_background_within_apply_every_s(tmp_path):
    store = open_store(tmp_path, apply_every_s=0.01)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(1), 30, 0))
    for _ in range(200):
        if store.metrics()["log_lag_events"] == 0:
            break
        time.sleep(0.01)
    m = store.metrics()
    assert m["log_lag_events"] == 0 and m["events_applied_total"] == 30
    assert store.allocation("p1").effective_events == 30
    store.close()


# ------------------------------------------------------------ snapshot + replay
def _drive(store: PolicyStore, rng: np.random.Generator, rounds: range, ids: dict[str, list[str]]) -> None:
    """Ingest rounds of events for both placements, mixing variants, one applier pass each."""
    for r in rounds:
        batch = events(rng, 120, r * 1000, decision_ids=ids["p1"])
        batch += events(rng, 40, r * 1000 + 500, pid="p2", networks=("x", "y"), decision_ids=ids["p2"])
        rng.shuffle(batch)
        store.ingest(batch)
        store.flush()


def _registered(*names: str) -> list[str]:
    return [n for n in names if n in POLICIES]


@pytest.mark.parametrize("policy", _registered("static", "ts_gmm"))
def test_snapshot_plus_replay_equals_a_store_that_never_restarted(tmp_path, policy):
    params = {"half_life_hours": 1.0} if policy == "ts_gmm" else {}
    live = open_store(tmp_path / "live")
    live.put_placement(placement(), ab(policy, **params))
    live.put_placement(placement("p2", networks=("x", "y")), ExperimentConfig.single(policy, params))
    ids = {
        "p1": [d.decision_id for d in live.decide_batch("p1", [(f"r{i}", {}) for i in range(40)])] + [None],
        "p2": [None],
    }
    rng = np.random.default_rng(7)
    rounds = 4 if policy == "static" else 2
    _drive(live, rng, range(rounds), ids)
    live.snapshot()
    _drive(live, rng, range(rounds, 2 * rounds), ids)
    crash_copy(tmp_path / "live", tmp_path / "crashed")
    restarted = open_store(tmp_path / "crashed")
    assert restarted.metrics()["events_replayed_total"] > 0
    for pid, variants in (("p1", ("champion", "challenger", "holdout")), ("p2", ("champion",))):
        for v in variants:
            assert_same_stats(stats(live, pid, v), stats(restarted, pid, v))
        assert restarted.experiment_report(pid) | {"variants": None} == live.experiment_report(pid) | {"variants": None}
        for v in variants:
            a = live.experiment_report(pid)["variants"][v]
            b = restarted.experiment_report(pid)["variants"][v]
            assert (a["requests"], a["revenue_per_request"]) == (b["requests"], b["revenue_per_request"])
    # Both keep going identically.
    _drive(live, np.random.default_rng(99), range(100, 101), ids)
    _drive(restarted, np.random.default_rng(99), range(100, 101), ids)
    assert_same_stats(stats(live), stats(restarted))
    restarted.close()
    live.close()
    # A clean restart (final snapshot, no replay) holds the same too.
    again = open_store(tmp_path / "live")
    assert again.metrics()["events_replayed_total"] == 0
    assert_same_stats(stats(again), stats(restarted_reopened := open_store(tmp_path / "crashed")))
    restarted_reopened.close()
    again.close()


def test_replay_merging_live_groups_learns_the_same_events_alike_at_every_restart(tmp_path, monkeypatch):
    from serving.applier import Applier

    live = open_store(tmp_path / "live")
    live.put_placement(placement(), ab("ts_gmm", half_life_hours=1.0))
    ids = {"p1": [None], "p2": [None]}
    rng = np.random.default_rng(8)
    _drive(live, rng, range(2), ids)
    live.snapshot()
    _drive(live, rng, range(2, 6), ids)  # four live groups behind the snapshot
    for copy in ("a", "b", "exact"):
        crash_copy(tmp_path / "live", tmp_path / copy)
    calls = []
    real = Applier.apply_group

    def counted(self, records, entries, **kw):
        calls.append((self, len(records)))
        return real(self, records, entries, **kw)

    def replay_groups(store: PolicyStore) -> list[int]:
        """Records per group its replay learned (stores of other tests may still be applying)."""
        return [n for applier, n in calls if applier is store._applier]

    monkeypatch.setattr(Applier, "apply_group", counted)
    a = open_store(tmp_path / "a", replay_group_events=10_000)
    assert replay_groups(a) == [4]  # one update per learner for the four groups
    b = open_store(tmp_path / "b", replay_group_events=10_000)
    exact = open_store(tmp_path / "exact", replay_group_events=0)
    assert replay_groups(exact) == [1, 1, 1, 1]
    for v in ("champion", "challenger", "holdout"):
        assert_same_stats(stats(a, "p1", v), stats(b, "p1", v))  # every restart learns alike
        assert_same_stats(stats(exact, "p1", v), stats(live, "p1", v))
        merged, want = stats(a, "p1", v), stats(live, "p1", v)
        assert merged["updates"] == want["updates"]  # model versions carry on as live
        requests = (..., FIELDS.index("requests"))
        assert np.allclose(merged["stats_totals"][requests], want["stats_totals"][requests], rtol=1e-12)
        assert (
            a.experiment_report("p1")["variants"][v]["requests"]
            == live.experiment_report("p1")["variants"][v]["requests"]
        )
    # The static holdout's learning does not depend on batching: equal up to float rounding.
    merged, want = stats(a, "p1", "holdout"), stats(live, "p1", "holdout")
    assert np.allclose(merged["stats_totals"], want["stats_totals"], rtol=1e-12)
    for store in (a, b, exact, live):
        store.close()


def test_events_not_yet_applied_at_a_crash_are_learned_on_open(tmp_path):
    live = open_store(tmp_path / "live", apply_every_s=30.0)  # the applier never runs by itself here
    live.put_placement(placement())
    batches = [events(np.random.default_rng(s), 100, s * 1000) for s in range(3)]
    for b in batches:
        live.ingest(b)
    assert live.metrics()["log_lag_events"] == 300
    crash_copy(tmp_path / "live", tmp_path / "crashed")
    live.flush()
    restarted = open_store(tmp_path / "crashed")
    assert restarted.metrics()["log_lag_events"] == 0
    a, b = stats(live), stats(restarted)
    assert a["stats_totals"].sum() > 0
    assert set(a["stats_segments"]) == set(b["stats_segments"])
    assert np.isclose(a["stats_totals"].sum(), b["stats_totals"].sum(), rtol=1e-12)
    assert restarted.experiment_report("p1")["variants"]["champion"]["requests"] == 300
    # The crash-time grouping is now marked in the log: a second restart repeats it exactly.
    restarted.close()
    crash_copy(tmp_path / "crashed", tmp_path / "twice")
    assert_same_stats(stats(open_store(tmp_path / "twice")), b)
    live.close()


def test_a_torn_log_tail_loses_only_the_torn_record(tmp_path):
    live = open_store(tmp_path / "live")
    live.put_placement(placement())
    live.ingest(events(np.random.default_rng(0), 100, 0))
    live.flush()
    expected = stats(live)
    live.close()
    segment = eventlog.list_segments(tmp_path / "live" / "log")[-1][1]
    with open(segment, "ab") as fh:  # a half-written record after the last good one
        fh.write(eventlog.encode_record(10**6, eventlog.EVENTS, b"x" * 1000)[:700])
    store = open_store(tmp_path / "live")
    assert_same_stats(stats(store), expected)
    assert store.ingest(events(np.random.default_rng(0), 100, 0)).duplicates == 100
    store.close()


def test_snapshots_compact_covered_log_segments(tmp_path):
    store = open_store(tmp_path, segment_max_bytes=4096)
    store.put_placement(placement())
    rng = np.random.default_rng(3)
    for k in range(6):
        store.ingest(events(rng, 60, k * 100))
    store.flush()
    before = store.metrics()["log_segments"]
    store.snapshot()  # a base
    store.ingest(events(rng, 60, 900))
    store.snapshot()  # a delta: the log stays back to the only base
    assert store.metrics()["log_segments"] >= before
    store.snapshot(full=True)  # the first base is now the older one kept: segments it covers go
    after = store.metrics()["log_segments"]
    assert before > 3 and after < before
    firsts = [f for f, _ in eventlog.list_segments(tmp_path / "log")]
    assert firsts[0] > 1
    expected = stats(store)
    store.close()
    store = open_store(tmp_path, segment_max_bytes=4096)
    assert_same_stats(stats(store), expected)
    store.close()


def test_periodic_snapshots_happen_by_event_count(tmp_path):
    store = open_store(tmp_path, snapshot_every_events=50, apply_every_s=0.01)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(0), 60, 0))
    for _ in range(300):
        if store.metrics()["snapshot_lsn"] > 0:
            break
        time.sleep(0.01)
    assert store.metrics()["snapshot_lsn"] > 0
    assert store.metrics()["snapshot_age_seconds"] is not None
    store.close()


def test_one_directory_one_store(tmp_path):
    store = open_store(tmp_path)
    with pytest.raises(InvalidConfig, match="in use"):
        open_store(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError):
        store.ingest([GOOD])
    open_store(tmp_path).close()


# ------------------------------------------------------------------- A/B variants
def test_variant_assignment_is_stable_and_close_to_the_split(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement(), ab())
    n = 20_000
    for prefix in ("req", "other", "third"):
        reqs = [(f"{prefix}-{i}", {"country": "KR"}) for i in range(n)]
        decisions = store.decide_batch("p1", reqs)
        share = {v: sum(d.variant == v for d in decisions) / n for v in ("champion", "challenger", "holdout")}
        assert abs(share["champion"] - 0.80) < 0.015
        assert abs(share["challenger"] - 0.15) < 0.012
        assert abs(share["holdout"] - 0.05) < 0.008
        again = [store.decide("p1", rid, ctx).variant for rid, ctx in reqs[:300]]
        assert again == [d.variant for d in decisions[:300]]
        assert all(d.decision_id.startswith(d.variant + ".") for d in decisions)
    # A user id wins over the request id and keeps the user in one variant.
    users = {store.decide("p1", f"r{i}", {"user_id": "u42"}).variant for i in range(50)}
    assert len(users) == 1
    assert store.decide("p1", "r", {}, user_id="u42").variant in users
    store.close()
    store = open_store(tmp_path)  # stable across restarts
    assert store.decide("p1", "r", {"user_id": "u42"}).variant in users
    store.close()


def test_outcomes_are_learned_only_by_the_variant_that_decided(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement(), ab())
    rng = np.random.default_rng(5)
    challenger = [d for d in store.decide_batch("p1", [(f"r{i}", {}) for i in range(500)]) if d.variant == "challenger"]
    store.ingest(events(rng, 40, 0, decisions=challenger))
    store.ingest(events(rng, 30, 100))  # no decision id -> champion
    store.ingest(events(rng, 20, 200, decision_ids=["ghost.0123", "nodot"]))  # unknown -> champion
    store.flush()
    report = store.experiment_report("p1")["variants"]
    assert [report[v]["requests"] for v in ("champion", "challenger", "holdout")] == [50, 40, 0]
    assert store.allocation("p1", variant="challenger").effective_events == 40
    assert store.allocation("p1", variant="holdout").effective_events == 0
    with pytest.raises(InvalidDecisionRequest, match="no variant"):
        store.allocation("p1", variant="nope")
    store.close()


def test_experiment_report_matches_the_ab_statistics_of_the_events(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement(), ab())
    rng = np.random.default_rng(11)
    decisions = store.decide_batch("p1", [(f"r{i}", {}) for i in range(300)])
    batch = events(rng, 600, 0, decisions=decisions)
    store.ingest(batch)
    store.flush()
    report = store.experiment_report("p1")
    sums = {}
    for v in ("champion", "challenger"):
        reward = np.array([e["revenue_cpm"] for e in batch if e["decision_id"].startswith(v + ".")])
        sums[v] = (len(reward), reward.sum(), (reward**2).sum())
    expected = unpaired_lift(*sums["champion"], *sums["challenger"])
    row = report["variants"]["challenger"]
    assert row["requests"] == sums["challenger"][0]
    assert row["revenue_per_request"] == pytest.approx(sums["challenger"][1] / sums["challenger"][0])
    for key in ("lift", "ci_low", "ci_high", "p_value"):
        assert row[key] == pytest.approx(getattr(expected, key), rel=1e-9)
    always_valid = unpaired_msprt_p_value(*sums["champion"], *sums["challenger"])
    assert row["p_value_always_valid"] == pytest.approx(always_valid, rel=1e-9)
    assert row["p_value_always_valid"] >= row["p_value"]  # the price of looking at any time
    assert report["variants"]["champion"]["lift"] is None
    assert report["variants"]["holdout"]["lift"] is None or report["variants"]["holdout"]["requests"] >= 2
    store.close()


def test_changing_the_traffic_split_keeps_learned_state_and_counters(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement(), ab())
    store.ingest(events(np.random.default_rng(0), 50, 0))
    store.flush()
    before = stats(store)
    resplit = ExperimentConfig((VariantConfig("champion", 50, "static"), VariantConfig("challenger", 50, "static")))
    store.set_experiment("p1", resplit)
    assert_same_stats(stats(store), before)
    assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 50
    assert set(store.experiment_report("p1")["variants"]) == {"champion", "challenger"}
    store.close()


def test_replacing_a_placement_keeps_learning_only_with_the_same_networks(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(0), 80, 0))
    store.flush()
    # Same networks, other bounds: the statistics carry over.
    wider = PlacementConfig.from_dict(
        "p1", {"networks": [{"id": n, "floor_max_cpm": 40.0} for n in ("alpha", "beta", "house")],
               "segment_by": ["country", "os"]},
    )  # fmt: skip
    assert store.put_placement(wider) is False
    assert store.allocation("p1").effective_events == 80
    assert store.get_placement("p1").networks[0].floor_max_cpm == 40.0
    # Another network list: a fresh start.
    store.put_placement(placement(networks=("alpha", "beta")))
    assert store.allocation("p1").effective_events == 0
    assert store.ingest([{**GOOD, "network": "house"}]).rejected
    expected = stats(store)
    store.close()
    store = open_store(tmp_path)
    assert_same_stats(stats(store), expected)
    store.close()


# ------------------------------------------------------------------- swap_model
def test_swap_model_switches_decisions_atomically_and_survives_restarts(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement(), ab())
    store.ingest(events(np.random.default_rng(0), 30, 0))
    store.flush()
    only_beta = make_policy("static", placement("trained-elsewhere"), weights={"alpha": 0, "beta": 1, "house": 0})
    version = store.swap_model("p1", "champion", only_beta.state())
    assert version.startswith("static.") and "+" in version
    decisions = [d for d in store.decide_batch("p1", [(f"r{i}", {}) for i in range(400)]) if d.variant == "champion"]
    assert decisions and {d.network for d in decisions} == {"beta"}
    assert {d.model_version for d in decisions} == {version}
    assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 30  # counters kept
    assert store.get_experiment("p1").variant("champion").params["weights"]["beta"] == 1.0
    crash_copy(tmp_path, tmp_path.parent / (tmp_path.name + "-crash"))
    store.close()
    for path in (tmp_path, tmp_path.parent / (tmp_path.name + "-crash")):
        reopened = open_store(path)
        d = [x for x in reopened.decide_batch("p1", [(f"r{i}", {}) for i in range(200)]) if x.variant == "champion"]
        assert {x.network for x in d} == {"beta"} and {x.model_version for x in d} == {version}
        reopened.close()


def test_swap_model_keeps_serving_while_it_swaps(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement(), ExperimentConfig.single("static"))
    errors: list[BaseException] = []
    stop = threading.Event()
    seen: set[str] = set()

    def decide() -> None:
        try:
            while not stop.is_set():
                seen.add(store.decide("p1", "r", {"country": "KR"}).network)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=decide) for _ in range(3)]
    for t in threads:
        t.start()
    for net in ("alpha", "beta", "house", "alpha"):
        weights = {n: float(n == net) for n in ("alpha", "beta", "house")}
        store.swap_model("p1", "champion", make_policy("static", placement(), weights=weights).state())
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert {store.decide("p1", f"r{i}", {}).network for i in range(50)} == {"alpha"}
    store.close()


@pytest.mark.parametrize(
    ("other", "error", "message"),
    [
        (placement(networks=("alpha", "beta")), InvalidState, "networks"),
        (placement(segment_by=["country"]), InvalidState, "segmented"),
    ],
)
def test_swap_model_refuses_a_state_for_other_networks(tmp_path, other, error, message):
    store = open_store(tmp_path)
    store.put_placement(placement())
    with pytest.raises(error, match=message):
        store.swap_model("p1", "champion", make_policy("static", other).state())
    store.close()


def test_swap_model_refuses_unknown_variant_and_bad_state(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    state = make_policy("static", placement()).state()
    with pytest.raises(InvalidDecisionRequest, match="no variant"):
        store.swap_model("p1", "ghost", state)
    with pytest.raises(InvalidState):
        store.swap_model("p1", "champion", {k: v for k, v in state.items() if k != "meta"})
    store.close()


# ------------------------------------------------------------------ concurrency
def test_concurrent_decisions_and_ingests(tmp_path):
    store = open_store(tmp_path, apply_every_s=0.005)
    store.put_placement(placement(), ab())
    errors: list[BaseException] = []
    results: list[IngestResult] = []

    def ingest(k: int) -> None:
        try:
            rng = np.random.default_rng(k)
            for j in range(5):
                # overlapping ids between threads: each id must be accepted exactly once
                results.append(store.ingest(events(rng, 50, (k % 2) * 10_000 + j * 50)))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    def decide(k: int) -> None:
        try:
            for i in range(300):
                store.decide("p1", f"{k}-{i}", {"country": "US", "os": "ios"})
            store.decide_batch("p1", [(f"b{k}-{i}", {}) for i in range(200)])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=decide, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    assert not errors
    assert sum(r.accepted for r in results) == 500
    assert sum(r.duplicates for r in results) == 500
    m = store.metrics()
    assert m["events_applied_total"] == 500 and m["log_lag_events"] == 0
    assert m["decisions_total"] == 3 * 500
    assert sum(v["requests"] for v in store.experiment_report("p1")["variants"].values()) == 500
    store.close()


def test_metrics_report_counters_and_placements(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    store.ingest([*events(np.random.default_rng(0), 10, 0), {"bad": 1}, events(np.random.default_rng(0), 1, 0)[0]])
    store.flush()
    m = store.metrics()
    assert (m["events_accepted_total"], m["events_duplicate_total"], m["events_rejected_total"]) == (10, 1, 1)
    assert m["placements"]["p1"]["requests"] == 10
    assert m["placements"]["p1"]["revenue_per_request"] > 0
    assert m["dedupe_entries"] == 10 and m["log_lag_events"] == 0
    store.close()


# ------------------------------------------------------------------ file ingest
def _write_logs(tmp_path) -> list:
    rng = np.random.default_rng(2)
    rows = events(rng, 120, 0)
    for r in rows[:60]:
        r["ts"] = "2026-11-21T10:00:00Z"
        if not r["filled"]:
            del r["revenue_cpm"]  # absent on some lines of the NDJSON
    ndjson = tmp_path / "a.ndjson"
    ndjson.write_text("\n".join(json.dumps(r) for r in rows[:60]) + "\n" + json.dumps({**rows[0], "network": "zzz"}))
    parquet = tmp_path / "b.parquet"
    pl.DataFrame(rows[60:]).write_parquet(parquet)
    return [ndjson, parquet]


def test_ingest_files_into_a_state_directory(tmp_path):
    paths = _write_logs(tmp_path)
    store = open_store(tmp_path / "state")
    store.put_placement(placement())
    store.close()
    result = ingest_files(paths, state_dir=tmp_path / "state", batch_size=25)
    assert (result.accepted, result.duplicates) == (120, 0)
    assert [i for i, _ in result.rejected] == [60] and "zzz" in result.rejected[0][1]
    again = ingest_files(paths, state_dir=tmp_path / "state")
    assert (again.accepted, again.duplicates) == (0, 120)
    store = open_store(tmp_path / "state")
    assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 120
    store.close()


def test_ingest_files_posts_batches_to_a_service(tmp_path):
    paths = _write_logs(tmp_path)
    seen: list[list[dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/outcomes"
        assert request.headers["authorization"] == "Bearer k"
        body = json.loads(request.content)
        seen.append(body)
        rejected = [{"index": i, "error": "bad"} for i, e in enumerate(body) if e["network"] == "zzz"]
        return httpx.Response(200, json={"accepted": len(body) - len(rejected), "duplicates": 0, "rejected": rejected})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    result = ingest_files(paths, url="http://svc:1/", api_key="k", batch_size=50, client=client)
    assert [len(b) for b in seen] == [50, 50, 21]
    assert result.accepted == 120 and result.rejected == [(60, "bad")]
    assert all(isinstance(e["ts"], (str, float, int)) for b in seen for e in b)
    refused = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "no"})))
    with pytest.raises(IngestFailed, match="401"):
        ingest_files(paths, url="http://svc:1", client=refused)


def test_ingest_files_needs_exactly_one_destination(tmp_path):
    with pytest.raises(AdbanditError, match="exactly one"):
        ingest_files([tmp_path / "x.ndjson"])


def test_decisions_and_ingests_do_not_wait_for_a_slow_refit(tmp_path, monkeypatch):
    from bandit.policies.static import StaticPolicy

    store = open_store(tmp_path, apply_every_s=0.01)
    store.put_placement(placement())
    refitting = threading.Event()
    release = threading.Event()
    real = StaticPolicy._build_table

    def slow_build(self, *args):
        refitting.set()
        release.wait(5.0)
        return real(self, *args)

    monkeypatch.setattr(StaticPolicy, "_build_table", slow_build)
    store.ingest(events(np.random.default_rng(0), 20, 0))
    assert refitting.wait(5.0), "the applier should be refitting now"
    try:
        start = time.perf_counter()
        for i in range(50):
            store.decide("p1", f"r{i}", {"country": "KR"})
        result = store.ingest(events(np.random.default_rng(1), 20, 100))
        elapsed = time.perf_counter() - start
        assert result.accepted == 20
        assert elapsed < 1.0, f"decide/ingest waited {elapsed:.2f} s for the refit"
        assert not release.is_set()
    finally:
        release.set()
    monkeypatch.setattr(StaticPolicy, "_build_table", real)
    store.flush()
    assert store.allocation("p1").effective_events == 40
    store.close()


def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(tmp_path):
    from serving import snapshots

    store = open_store(tmp_path)
    store.put_placement(placement())
    rng = np.random.default_rng(4)
    store.ingest(events(rng, 50, 0))
    store.snapshot()
    store.ingest(events(rng, 50, 100))
    store.snapshot()
    store.ingest(events(rng, 50, 200))
    store.flush()
    expected = stats(store)
    crash_copy(tmp_path, tmp_path.parent / "copy")
    store.close()
    kept = snapshots.list_snapshots(tmp_path.parent / "copy" / "snapshots")
    assert len(kept) == 2
    newest = kept[-1][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    reopened = open_store(tmp_path.parent / "copy")
    assert_same_stats(stats(reopened), expected)
    assert reopened.metrics()["events_replayed_total"] == 100
    assert reopened.ingest(events(np.random.default_rng(4), 50, 0)).duplicates == 50
    reopened.close()


def test_tables_lagging_their_statistics_at_a_snapshot_are_refit_after_restart(tmp_path):
    """Refits are throttled; a snapshot taken in between records the stale segments, and the
    restored store rebuilds them, so decisions agree with a store that refit at once."""
    batch = events(np.random.default_rng(9), 300, 0)
    live = open_store(tmp_path / "live")
    live.put_placement(placement())
    live.ingest(batch)
    live.flush()
    expected = live.allocation("p1", "KR|ios").to_dict()
    live.close()

    lagging = open_store(tmp_path / "lagging", refit_every_s=1e9)
    lagging.put_placement(placement())
    lagging.ingest(batch)
    lagging.snapshot()  # statistics applied, tables not refit yet
    assert lagging.allocation("p1", "KR|ios").networks[0].expected_revenue_cpm == 0.0
    lagging.close()
    restored = open_store(tmp_path / "lagging", refit_every_s=1e9)
    got = restored.allocation("p1", "KR|ios").to_dict()
    restored.close()
    assert got["networks"] == expected["networks"]


def test_a_refit_backlog_after_a_restart_is_worked_off_in_the_background(tmp_path, monkeypatch):
    """Opening refits stale segments for at most ``open_refit_budget_s``; the applier refits
    the rest in slices of ``refit_budget_s``, while the store already serves."""
    from bandit.policies.static import StaticPolicy

    batch = events(np.random.default_rng(10), 300, 0)
    segments = sorted({"|".join(e["context"].values()) for e in batch})
    reference = open_store(tmp_path / "reference")
    reference.put_placement(placement())
    reference.ingest(batch)
    reference.flush()
    expected = {seg: reference.allocation("p1", seg).to_dict()["networks"] for seg in segments}
    reference.close()

    lagging = open_store(tmp_path / "lagging", refit_every_s=1e9)
    lagging.put_placement(placement())
    lagging.ingest(batch)
    lagging.snapshot()  # statistics applied, tables not refit yet
    lagging.close()
    real = StaticPolicy._build_table

    def slow_build(self, *args):
        time.sleep(0.05)
        return real(self, *args)

    monkeypatch.setattr(StaticPolicy, "_build_table", slow_build)
    store = open_store(tmp_path / "lagging", open_refit_budget_s=0.01, refit_budget_s=0.01, refit_every_s=0.01)
    served = {seg: store.allocation("p1", seg).to_dict()["networks"] for seg in segments}
    assert served != expected  # open returned before every segment was refit
    for _ in range(500):
        served = {seg: store.allocation("p1", seg).to_dict()["networks"] for seg in segments}
        if served == expected:
            break
        time.sleep(0.02)
    assert served == expected
    store.close()
