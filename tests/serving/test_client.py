"""serving.client: typed results against the real app, retries and errors against a mock transport."""

from __future__ import annotations

import httpx
import pytest

from serving.client import AdbanditClient, Allocation, Decision, OutcomesResult, ServiceError
from tests.serving.conftest import P1_BODY, outcome


def test_typed_results_from_the_real_app(client):
    api = AdbanditClient("http://testserver", http=client)
    api.put_placement("p1", P1_BODY)
    assert api.placement("p1")["segment_by"] == ["country", "os"] and api.placement("nope") is None
    decision = api.decide("p1", "r1", {"country": "KR", "os": "ios"})
    assert isinstance(decision, Decision) and decision.segment == "KR|ios" and decision.network in ("alpha", "beta")
    assert decision.mode == "single" and decision.offers == ()
    batch = api.decide_batch("p1", [("a", {"country": "KR", "os": "ios"}), ("b", None)])
    assert len(batch) == 2 and batch[0].segment == "KR|ios" and batch[1].decision_id != batch[0].decision_id
    result = api.post_outcomes([outcome(0), outcome(0, prefix="x"), {"event_id": "bad"}])
    assert isinstance(result, OutcomesResult) and (result.accepted, result.duplicates) == (2, 0)
    assert [r.index for r in result.rejected] == [2]
    assert api.post_outcomes([outcome(0)]).duplicates == 1
    allocation = api.allocation("p1", segment="KR|ios")
    assert isinstance(allocation, Allocation) and allocation.segment == "KR|ios" and allocation.currency == "USD"
    assert allocation.network("alpha").weight + allocation.network("beta").weight == pytest.approx(1.0)
    assert api.prebid_floors("p1")["floorsSchemaVersion"] == 2
    page = api.prebid_floors(["p1", "p1"], key="gptSlot", bidders=True)
    assert page["modelGroups"][0]["schema"]["fields"] == ["gptSlot", "country", "os", "bidder"]
    priced = api.openrtb_floors({"id": "r", "imp": [{"id": "1", "tagid": "p1", "ext": {"x": 1}}]})
    assert priced["imp"][0]["bidfloor"] >= 0 and priced["imp"][0]["ext"]["x"] == 1
    with pytest.raises(ServiceError) as bad:
        api.allocation("p1", segment="KR")
    assert bad.value.status == 422 and "country|os" in str(bad.value)


def test_waterfall_and_auction_plans_come_back_typed(client):
    api = AdbanditClient("http://testserver", http=client)
    networks = [{"id": n, "floor_min_cpm": 0.0, "floor_max_cpm": 20.0} for n in ("alpha", "beta", "gamma")]
    api.put_placement("wf", {"networks": networks, "mode": "waterfall", "max_tiers": 2})
    api.put_placement("au", {"networks": networks, "mode": "auction"})
    tiers = api.decide("wf", "r1")
    assert tiers.mode == "waterfall" and 1 <= len(tiers.offers) <= 2
    assert (tiers.network, tiers.floor_cpm) == (tiers.offers[0].network, tiers.offers[0].floor_cpm)
    bidders = api.decide_batch("au", [("a", None), ("b", None)])
    assert all(d.mode == "auction" and d.offers for d in bidders)
    allocation = api.allocation("au")
    assert allocation.mode == "auction" and allocation.plans
    assert sum(p.probability for p in allocation.plans) <= 1.0 + 1e-9
    assert {o.network for p in allocation.plans for o in p.offers} <= {"alpha", "beta", "gamma"}
    single = api.decide("wf", "r2")
    assert single.offers and api.allocation("wf").mode == "waterfall"


def mock(responses: list, calls: list) -> httpx.Client:
    """A client whose transport answers from ``responses`` in turn (an exception is raised)."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handler))


OK = {"accepted": 1, "duplicates": 0, "rejected": []}


@pytest.mark.parametrize(
    "transient",
    [
        httpx.Response(503, json={"detail": "not ready"}, headers={"Retry-After": "0"}),
        httpx.Response(507, json={"detail": "disk full"}, headers={"Retry-After": "0"}),
        httpx.Response(429, json={"detail": "slow down"}),
        httpx.ConnectError("refused"),
    ],
)
def test_transient_failures_are_retried(transient):
    calls: list = []
    http = mock([transient, httpx.Response(200, json=OK)], calls)
    api = AdbanditClient("http://svc", api_key="k", backoff_s=0.0, http=http)
    assert api.post_outcomes([outcome(0)]) == OutcomesResult(1, 0, ())
    assert len(calls) == 2 and calls[1].content == calls[0].content
    assert calls[0].headers["authorization"] == "Bearer k"


def test_a_client_error_is_not_retried_and_carries_the_detail():
    calls: list = []
    http = mock([httpx.Response(401, json={"detail": "no key"})], calls)
    api = AdbanditClient("http://svc", backoff_s=0.0, http=http)
    with pytest.raises(ServiceError) as error:
        api.health()
    assert len(calls) == 1 and error.value.status == 401 and error.value.detail == "no key"


def test_retries_stop_after_the_attempts():
    calls: list = []
    api = AdbanditClient("http://svc", attempts=3, backoff_s=0.0, http=mock([httpx.ConnectError("down")] * 3, calls))
    with pytest.raises(ServiceError) as error:
        api.health()
    assert len(calls) == 3 and error.value.status == 0 and "unreachable" in str(error.value)
