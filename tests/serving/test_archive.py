"""The outcome archive: every learned event once, with its decision's propensities, usable
for off-policy evaluation straight from the service's state directory, and as input to
``adbandit ingest`` (re-learning from it is tested in ``tests/experiments/test_relearn.py``)."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import polars as pl
import pytest

from bandit import make_policy
from experiments.ope import LoggedDecisions, evaluate
from serving.decision_ids import DecisionSigner
from serving.dedupe import event_hashes
from serving.ingest import ingest_files
from serving.validation import OUTCOME_FIELDS
from tests.serving.test_store import crash_copy, events, open_store, placement, stats


def _archive(state_dir) -> pl.DataFrame:
    return pl.read_parquet(sorted((state_dir / "outcomes").glob("*.parquet")))


def _decided_events(store, rng, n, start):
    decisions = store.decide_batch("p1", [(f"r{start + i}", {"country": "KR", "os": "ios"}) for i in range(n)])
    out = events(rng, n, start, decision_ids=[d.decision_id for d in decisions])
    for event, d in zip(out, decisions, strict=True):
        event["network"], event["floor_cpm"], event["context"] = d.network, d.floor_cpm, {"country": "KR", "os": "ios"}
        if event["filled"]:
            event["revenue_cpm"] = d.floor_cpm + 1.0
    return out, decisions


def test_archived_events_carry_their_decisions_propensities(tmp_path):
    store = open_store(tmp_path, default_policy="epsilon_greedy")
    store.put_placement(placement())
    rng = np.random.default_rng(0)
    decided, decisions = _decided_events(store, rng, 200, 0)
    unknown = events(rng, 50, 1000)  # no decision id: propensities unknown
    assert store.ingest(decided + unknown).accepted == 250
    store.snapshot()
    frame = _archive(tmp_path)
    assert frame.height == 250
    known = frame.filter(pl.col("propensity").is_not_nan())  # in ingestion order
    assert known.height == 200
    np.testing.assert_allclose(known["propensity"].to_numpy(), [d.propensity for d in decisions], rtol=4e-4)
    np.testing.assert_allclose(known["floor_propensity"].to_numpy(), [d.floor_propensity for d in decisions], rtol=4e-4)
    assert frame.filter(pl.col("propensity").is_nan()).height == 50
    store.close()


def test_replay_after_a_crash_archives_every_event_exactly_once(tmp_path):
    store = open_store(tmp_path / "live")
    store.put_placement(placement())
    rng = np.random.default_rng(1)
    store.ingest(events(rng, 100, 0))
    store.snapshot()  # archives the first 100
    store.ingest(events(rng, 100, 100))
    store.flush()  # learned (buffered in the archive), not yet archived
    crash_copy(tmp_path / "live", tmp_path / "crashed")
    store.close()
    again = open_store(tmp_path / "crashed")
    again.snapshot()
    frame = _archive(tmp_path / "crashed")
    again.close()
    assert frame.height == 200 and frame["event_hash"].n_unique() == 200


@pytest.mark.parametrize("seed", range(3))
def test_off_policy_evaluation_runs_on_the_service_archive(tmp_path, seed):
    """Log with an exploring policy through the store, then estimate a fixed candidate's
    revenue per request from the archive: the estimate is finite and its interval covers
    the mean revenue of the candidate's choices under this synthetic market."""
    store = open_store(tmp_path, default_policy="epsilon_greedy", default_params={"epsilon": 1.0})
    store.put_placement(placement())
    rng = np.random.default_rng(seed)
    for k in range(5):
        decided, _ = _decided_events(store, rng, 400, k * 400)
        store.ingest(decided)
    store.snapshot()
    frame = _archive(tmp_path)
    store.close()
    candidate = make_policy("static", placement(), floors={"alpha": 1.0, "beta": 1.0, "house": 1.0})
    logs = LoggedDecisions.from_frame(candidate.placement, frame)
    assert len(logs) == 2000
    estimates = evaluate(logs, candidate)
    for est in estimates.values():
        assert math.isfinite(est.value) and est.ci_low <= est.value <= est.ci_high


@pytest.mark.parametrize("p", [1.0, 0.5, 0.3, 1e-3, 1e-7])
def test_decision_ids_carry_propensities_to_four_significant_digits(p):
    signer = DecisionSigner(b"k" * 32)
    one = signer.issue("p1", "champion", "alpha", 1.25, p, p / 2, floor_density=3 * p)
    many = signer.issue_batch("p1", "challenger", ("alpha", "beta"), np.array([0, 1]), np.array([1.25, 0.5]),
                              np.array([p, 1.0]), np.array([p / 2, 0.25]), np.array([np.nan, 0.7]))  # fmt: skip
    checks = ((one, "alpha", 1.25, (p, p / 2, 3 * p)), (many[0], "alpha", 1.25, (p, p / 2, np.nan)),
              (many[1], "beta", 0.5, (1.0, 0.25, 0.7)))  # fmt: skip
    for decision_id, network, floor, expected in checks:
        v = signer.verify(decision_id, "p1", network, floor)
        assert v.ok, v.reason
        np.testing.assert_allclose((v.propensity, v.floor_propensity, v.floor_density), expected, rtol=4e-4)
    assert one.startswith("champion.") and many[1].startswith("challenger.")
    ids = signer.issue_batch("p1", "v", ("a",), np.zeros(1000, np.int64), np.ones(1000), np.full(1000, p),
                             np.full(1000, p))  # fmt: skip
    assert len(set(ids)) == 1000  # still unique


@pytest.mark.parametrize("decision_id", ["", "champion.0123456789abcdef", "x.zzzzzzzzzzzzzzzzzzzzzzzz",
                                         "champion.0123456789abcdef01234567"])  # fmt: skip
def test_foreign_decision_ids_have_unknown_propensities(decision_id):
    v = DecisionSigner(b"k" * 32).verify(decision_id, "p1", "alpha", 1.0)
    assert not v.ok and all(math.isnan(x) for x in (v.propensity, v.floor_propensity, v.floor_density))


# ------------------------------------------------------------------ the archive as input
def _archived_store(path, n: int = 300):
    """A store that learned ``n`` events and archived them; returns (its stats, the archive parts)."""
    store = open_store(path)
    store.put_placement(placement())
    rng = np.random.default_rng(7)
    store.ingest(events(rng, n // 2, 0))
    store.ingest(events(rng, n - n // 2, n // 2))
    store.snapshot()
    learned = stats(store)
    store.close()
    return learned, sorted((path / "outcomes").glob("*.parquet"))


def test_the_service_archive_ingests_into_a_new_state_dir_as_the_same_events(tmp_path):
    """The archive keeps hashes, not event ids, and segment keys, not contexts: ingested again,
    every row is accepted, learned into the same segments, and de-duplicated as the original
    event (in the new store on a re-run, and in the store that archived it)."""
    learned, parts = _archived_store(tmp_path / "live")
    assert parts and "event_id" not in pl.read_parquet(parts[0]).columns
    fresh = open_store(tmp_path / "fresh")
    fresh.put_placement(placement())
    fresh.close()
    result = ingest_files(parts, state_dir=tmp_path / "fresh", batch_size=70)
    assert (result.accepted, result.duplicates, result.rejected) == (300, 0, [])
    again = ingest_files(parts, state_dir=tmp_path / "fresh")
    assert (again.accepted, again.duplicates) == (0, 300)
    original = ingest_files(parts, state_dir=tmp_path / "live")
    assert (original.accepted, original.duplicates) == (0, 300)
    store = open_store(tmp_path / "fresh")
    relearned = stats(store)
    store.snapshot()
    rearchived = _archive(tmp_path / "fresh")
    store.close()
    np.testing.assert_array_equal(relearned["stats_segments"], learned["stats_segments"])
    for key in ("stats_totals", "stats_floor_values", "stats_price_values"):
        np.testing.assert_allclose(relearned[key], learned[key], rtol=1e-12, atol=1e-9, err_msg=key)
    first = _archive(tmp_path / "live")
    np.testing.assert_array_equal(rearchived["event_hash"].to_numpy(), first["event_hash"].to_numpy())
    np.testing.assert_array_equal(rearchived["segment"].to_numpy(), first["segment"].to_numpy())


def test_the_service_archive_posts_to_a_service_as_contract_events(tmp_path):
    _, parts = _archived_store(tmp_path / "live", n=40)
    posted: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            assert request.url.path == "/v1/placements/p1"
            return httpx.Response(200, json={"placement": "p1", "segment_by": ["country", "os"], "networks": []})
        body = json.loads(request.content)
        posted.extend(body)
        return httpx.Response(200, json={"accepted": len(body), "duplicates": 0, "rejected": []})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    result = ingest_files(parts, url="http://svc:1", client=client)
    assert result.accepted == 40 and len(posted) == 40
    archive = _archive(tmp_path / "live")
    for event, row in zip(posted, archive.iter_rows(named=True), strict=True):
        assert set(event) <= OUTCOME_FIELDS and "event_hash" not in event
        assert event["event_id"] == f"archived:{row['event_hash']:016x}"
        assert event_hashes([event["event_id"]])[0] == row["event_hash"]
        assert placement().segment_of(event["context"]) == row["segment"]
    # Ids that only look archived hash as ordinary ids.
    assert event_hashes(["archived:0123456789ABCDEF"])[0] != 0x0123456789ABCDEF
    assert event_hashes(["archived:0123456789abcdef"])[0] == 0x0123456789ABCDEF


def test_the_archived_floor_is_the_served_floor_to_the_cent(tmp_path):
    """ts_gmm draws floors continuously; the service serves them in cents and the archive
    holds exactly the served floor with the propensities and density of that rounded floor."""
    store = open_store(tmp_path, default_policy="ts_gmm")
    store.put_placement(placement())
    rng = np.random.default_rng(4)
    decided, decisions = _decided_events(store, rng, 300, 0)
    floors = [d.floor_cpm for d in decisions]
    assert all(float(f"{f:.2f}") == f for f in floors) and len(set(floors)) > 5, floors[:10]
    assert store.ingest(decided).accepted == 300
    store.snapshot()
    frame = _archive(tmp_path)
    store.close()
    assert frame["floor_cpm"].to_list() == floors
    np.testing.assert_allclose(frame["floor_density"].to_numpy(), [d.floor_density for d in decisions], rtol=4e-4)
    np.testing.assert_allclose(frame["floor_propensity"].to_numpy(), [d.floor_propensity for d in decisions], rtol=4e-4)


def test_decide_answers_floors_in_cents_over_http(p1):
    for i in range(20):
        body = {"placement": "p1", "request_id": f"r{i}", "context": {"country": "KR", "os": "ios"}}
        response = p1.post("/v1/decide", json=body)
        assert response.status_code == 200, response.text
        text = json.loads(response.text)
        raw = response.text.split('"floor_cpm":', 1)[1].split(",", 1)[0].strip()
        assert len(raw.partition(".")[2]) <= 2, raw  # e.g. 1.37, never 1.3700000000000001
        assert float(raw) == text["floor_cpm"]
    assert p1.get("/v1/placements/p1").json()["floor_precision_cpm"] == 0.01
    bad = p1.put("/v1/placements/p2", json={"networks": [{"id": "a"}], "floor_precision_cpm": 0.03})
    assert bad.status_code == 422 and "1/n CPM for a whole n" in bad.text, bad.text
    ok = p1.put("/v1/placements/p2", json={"networks": [{"id": "a"}], "floor_precision_cpm": 0.05})
    assert ok.status_code == 201 and ok.json()["floor_precision_cpm"] == 0.05, ok.text
    floors = {
        p1.post("/v1/decide", json={"placement": "p2", "request_id": f"q{i}"}).json()["floor_cpm"] for i in range(30)
    }
    assert all(round(f * 20) == f * 20 for f in floors), floors


def test_a_plan_outcome_is_one_archived_request_and_parts_without_the_column_still_read(tmp_path):
    """An auction outcome with three responses is three archived rows (each network's evidence)
    and one request earning the winner's price: ``request_revenue_cpm`` on its first row, NaN on
    the others, and off-policy evaluation reads one logged request with that reward. A later
    OpenRTB notice of a decision is archived with what it added (``joined_revenue_cpm``). A part
    written before the columns still reads, every row a request of its own."""
    from bandit.io import read_events
    from serving.openrtb import notice_event
    from tests.serving.test_store import T0

    store = open_store(tmp_path / "state", default_policy="ts_gmm")
    au = placement("au", mode="auction", max_calls=3)
    store.put_placement(au)
    kr = {"country": "KR", "os": "ios"}
    decisions = store.decide_batch("au", [(f"r{i}", kr) for i in range(40)])
    three = next(d for d in decisions if len(d.offers) == 3)
    (n0, f0), (n1, f1), (n2, f2) = three.offers
    responses = [
        {"network": n0, "floor_cpm": f0, "status": "bid", "price_cpm": round(f0 + 1.0, 4)},
        {"network": n1, "floor_cpm": f1, "status": "bid", "price_cpm": round(f1 + 2.5, 4), "won": True},
        {"network": n2, "floor_cpm": f2, "status": "no_bid"},
    ]
    plan = {"event_id": "m0", "decision_id": three.decision_id, "ts": T0, "placement": "au", "context": kr,
            "responses": responses}  # fmt: skip
    single = {"event_id": "s0", "ts": T0, "placement": "au", "network": n0, "floor_cpm": 1.0, "filled": True,
              "revenue_cpm": 2.0, "context": kr}  # fmt: skip
    assert store.ingest([plan, single]).accepted == 2
    store.snapshot()
    first_part = sorted((tmp_path / "state" / "outcomes").glob("*.parquet"))
    frame = pl.read_parquet(first_part)
    paid = round(f1 + 2.5, 4)
    np.testing.assert_array_equal(frame["request_revenue_cpm"].to_numpy(), [paid, np.nan, np.nan, 2.0])
    assert frame["joined_revenue_cpm"].is_nan().all()
    logged = LoggedDecisions.from_frame(au, frame)  # the single event has no propensities: skipped
    assert len(logged) == 1 and logged.reward.tolist() == [paid]
    assert logged.network.tolist() == [au.network_index(n0)]

    # Notices of another decision: a loss, then the win of another network.
    two = next(d for d in decisions if len(d.offers) >= 2 and d is not three)
    (m0, g0), (m1, g1) = two.offers[:2]
    notices = [
        notice_event(kind, decision_id=two.decision_id, placement=au, network=n, floor_cpm=f, segment="KR|ios",
                     price=price, now=T0)
        for kind, n, f, price in (("loss", m0, g0, 0.0), ("win", m1, g1, round(g1 + 1.5, 4)))
    ]  # fmt: skip
    for notice in notices:
        assert store.ingest([notice]).accepted == 1
    store.snapshot()
    store.close()
    second = pl.read_parquet(sorted(set((tmp_path / "state" / "outcomes").glob("*.parquet")) - set(first_part)))
    assert second["request_revenue_cpm"].to_list()[0] == 0.0 and math.isnan(second["request_revenue_cpm"][1])
    assert math.isnan(second["joined_revenue_cpm"][0]) and second["joined_revenue_cpm"][1] == round(g1 + 1.5, 4)

    # A part written before the columns: each of its rows is a request, as it always was.
    old = tmp_path / "old.parquet"
    frame.drop("request_revenue_cpm", "joined_revenue_cpm").write_parquet(old)
    legacy = LoggedDecisions.from_frame(au, read_events([old]))
    assert len(legacy) == 3 and legacy.reward.tolist() == [round(f0 + 1.0, 4), paid, 0.0]
    both = LoggedDecisions.from_frame(au, read_events([old, *first_part]))
    assert len(both) == 4 and both.reward.tolist() == [round(f0 + 1.0, 4), paid, 0.0, paid]

    # Ingested into a new state dir, the archive's requests are the same three requests.
    fresh = open_store(tmp_path / "fresh", default_policy="ts_gmm")
    fresh.put_placement(au)
    fresh.close()
    parts = sorted((tmp_path / "state" / "outcomes").glob("*.parquet"))
    assert ingest_files(parts, state_dir=tmp_path / "fresh", batch_size=2).accepted == 6
    again = open_store(tmp_path / "fresh", default_policy="ts_gmm")
    row = again.experiment_report("au")["variants"]["champion"]
    again.close()
    assert row["requests"] == 3
    assert row["revenue_per_request"] == pytest.approx((paid + 2.0 + round(g1 + 1.5, 4)) / 3)


def test_request_values_given_with_ingested_rows_are_taken_only_when_they_are_prices(tmp_path):
    """``PolicyStore.ingest(..., requests=)`` (what ``adbandit ingest`` passes for archive rows):
    NaN starts no request, a price starts one earning it, anything else is ignored (the row is
    the request it would be without)."""
    store = open_store(tmp_path)
    store.put_placement(placement())
    sent = events(np.random.default_rng(5), 5, 0)
    given = [(math.nan, math.nan), (7.5, math.nan), (-5.0, math.nan), (math.inf, math.nan), (1.0, 2.0)]
    assert store.ingest(sent, requests=given).accepted == 5
    store.flush()
    row = store.experiment_report("p1")["variants"]["champion"]
    own = [e["revenue_cpm"] if e["filled"] else 0.0 for e in sent[2:]]
    store.close()
    assert row["requests"] == 4
    assert row["revenue_per_request"] == pytest.approx((7.5 + sum(own)) / 4)
