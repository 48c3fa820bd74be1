"""Mistakes in the URL get a 4xx that says what is expected, and change nothing."""

from __future__ import annotations

import pytest

from tests.serving.conftest import outcome


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ("KR", "segments by country|os"),  # one field of two: used to answer 200 with the prior
        ("KR|ios|14", "2 non-empty values"),
        ("KR|", "<country>|<os>"),
        ("|ios", "<country>|<os>"),
        ("", "omit segment"),
    ],
)
def test_a_malformed_segment_key_is_422_naming_the_fields(p1, segment, expected):
    response = p1.get("/v1/placements/p1/allocation", params={"segment": segment})
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]


@pytest.mark.parametrize("segment", ["KR|ios", "JP|android", "*|ios", "KR|*", "*"])
def test_well_formed_segment_keys_are_answered(p1, segment):
    response = p1.get("/v1/placements/p1/allocation", params={"segment": segment})
    assert response.status_code == 200, response.text


def test_a_placement_without_segment_fields_takes_only_the_whole_placement(client):
    body = {"networks": [{"id": "alpha", "floor_min_cpm": 0.1, "floor_max_cpm": 5.0}], "segment_by": []}
    assert client.put("/v1/placements/flat", json=body).status_code == 201
    assert client.get("/v1/placements/flat/allocation", params={"segment": "*"}).status_code == 200
    response = client.get("/v1/placements/flat/allocation", params={"segment": "KR"})
    assert response.status_code == 422 and "no segment fields" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "params", "takes"),
    [
        ("get", "/v1/placements/p1/allocation", {"segmnet": "KR|ios"}, "it takes segment, variant"),
        ("get", "/v1/prebid/floors", {"placement": "p1", "format": "v1"}, "it takes bidders, code, key, placement"),
        ("get", "/v1/placements/p1", {"verbose": "1"}, "it takes none"),
        ("get", "/healthz", {"deep": "1"}, "it takes none"),
        ("get", "/metrics", {"name[]": "x"}, "it takes none"),
    ],
)
def test_an_unknown_query_parameter_is_422_naming_the_ones_taken(p1, method, path, params, takes):
    response = getattr(p1, method)(path, params=params)
    assert response.status_code == 422, response.text
    (issue,) = [i for i in response.json()["detail"] if i["loc"][0] == "query"]
    assert takes in issue["msg"] and issue["loc"][1] not in takes.split()[-1]


def test_a_repeated_query_parameter_is_422(p1):
    response = p1.get("/v1/placements/p1/allocation?segment=KR|ios&segment=JP|ios")
    assert response.status_code == 422 and "more than once" in response.text


def test_writes_with_an_unknown_query_parameter_change_nothing(p1):
    response = p1.post("/v1/outcomes?dry_run=1", json=[outcome(0)])
    assert response.status_code == 422 and "dry_run" in response.text
    decision = p1.post("/v1/decide?debug=1", json={"placement": "p1", "request_id": "r"})
    assert decision.status_code == 422 and "it takes none" in decision.text
    # The event was not stored: sent again properly, it is accepted, not a duplicate.
    assert p1.post("/v1/outcomes", json=[outcome(0)]).json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    metrics = p1.get("/metrics").text
    assert 'adbandit_decisions_total{placement="p1"}' not in metrics


def test_an_unknown_path_or_method_says_what_exists(p1):
    missing = p1.get("/v1/decid")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no endpoint GET /v1/decid; the API is listed at /docs"
    wrong = p1.get("/v1/decide")
    assert wrong.status_code == 405 and wrong.json()["detail"] == "GET is not allowed on /v1/decide; use POST"
    assert wrong.headers["allow"] == "POST"
    # Domain 404s keep their own message.
    assert p1.get("/v1/placements/nope/allocation").json()["detail"] == "placement 'nope' does not exist"
