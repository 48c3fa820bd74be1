"""Prebid floors ids (issue 11): each model group of the floors document carries a signed id of
its variant in ``modelVersion``; events posted back with it are learned by that variant, and a
page may post them without the write key. Forged, altered or expired ids are rejected by name
and teach nothing (serving/decision_ids.py, serving/intake.py, serving/routes/outcomes.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from starlette.exceptions import HTTPException

from serving.auth import poster_of
from serving.decision_ids import (
    FLOORS_ID_CHARS,
    ID_CHARS,
    DecisionSigner,
    is_floors_id,
)
from serving.prebid import ID_MARK

KEY = b"k" * 32
WRITE_KEY = "write-key-1234"
AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}
PAGE = "https://news.example"
BODY = {"networks": [{"id": "alpha", "floor_min_cpm": 0.1, "floor_max_cpm": 20.0, "bidder": "alpha"},
                     {"id": "beta", "floor_min_cpm": 0.1, "floor_max_cpm": 20.0, "bidder": "beta"}],
        "currency": "USD"}  # fmt: skip
EXPERIMENT = {"variants": [{"name": "champion", "traffic": 70, "policy": "static"},
                           {"name": "challenger", "traffic": 30, "policy": "static"}]}  # fmt: skip


# ----------------------------------------------------------------------------- the id itself
def test_a_floors_id_round_trips_and_names_its_variant():
    signer = DecisionSigner(KEY)
    now = 1_800_000_000.0
    fid = signer.issue_floors("challenger", "challenger:v3", issued_at=now - 10)
    assert fid.startswith("challenger.") and len(fid.split(".")[1]) == FLOORS_ID_CHARS
    assert is_floors_id(fid) and not is_floors_id("challenger." + "A" * ID_CHARS) and not is_floors_id(None)
    verdict = signer.verify_floors(fid, now=now, max_age_s=60)
    assert verdict.ok and verdict.variant == "challenger" and verdict.issued_at == now - 10 and not verdict.fallback
    fallback = signer.issue_floors("challenger", "challenger:fallback=champion:v1", issued_at=now, fallback=True)
    assert signer.verify_floors(fallback, now=now, max_age_s=60).fallback
    # A floors id is not a decision id, and a decision id of /v1/decide is not a floors id.
    assert not signer.verify(fid, "p", "alpha", 1.0).ok
    assert not signer.verify_floors(signer.issue("p", "champion", "alpha", 1.0, 0.5, 0.5), now=now, max_age_s=60).ok


def _flip(fid: str, at: int) -> str:
    variant, body = fid.split(".")
    c = "B" if body[at] != "B" else "C"
    return f"{variant}.{body[:at]}{c}{body[at + 1 :]}"


FORGED = [
    ("another variant's name", lambda f: "champion." + f.split(".")[1], "signature does not verify"),
    ("payload altered", lambda f: _flip(f, 3), "signature does not verify"),
    ("signature altered", lambda f: _flip(f, FLOORS_ID_CHARS - 2), "signature does not verify"),
    ("another key", lambda f: DecisionSigner(b"x" * 32).issue_floors("challenger", "v", issued_at=1.8e9), "signature"),
    ("not base64", lambda f: "challenger." + "!" * FLOORS_ID_CHARS, "not a floors id"),
    ("expired", lambda f: DecisionSigner(KEY).issue_floors("challenger", "v", issued_at=1.8e9 - 7200), "expired"),
    ("from the future", lambda f: DecisionSigner(KEY).issue_floors("challenger", "v", issued_at=1.8e9 + 3600), "ahead"),
]


@pytest.mark.parametrize(("case", "forge", "reason"), FORGED, ids=[c[0] for c in FORGED])
def test_forged_altered_or_expired_floors_ids_do_not_verify(case, forge, reason):
    signer = DecisionSigner(KEY)
    fid = signer.issue_floors("challenger", "challenger:v3", issued_at=1.8e9)
    verdict = signer.verify_floors(forge(fid), now=1.8e9, max_age_s=3600)
    assert not verdict.ok and verdict.variant is None and reason in verdict.reason


# ----------------------------------------------------------------------------- who posts
KEYS = (WRITE_KEY.encode(),)
POSTERS = [
    # (Authorization header, keys set, pages allowed) → poster, or None for a 401
    (None, (), True, "server"),  # no write key: everyone posts as before
    (f"Bearer {WRITE_KEY}", KEYS, True, "server"),
    (None, KEYS, True, "page"),  # no header while a key is set: a page, floors ids required
    (None, KEYS, False, None),  # pages refused altogether
    ("Bearer wrong", KEYS, True, None),  # a wrong key is never a page
    ("Basic d3JpdGU=", KEYS, True, None),
    ("", KEYS, True, None),
]


@pytest.mark.parametrize(("authorization", "keys", "pages", "expected"), POSTERS)
def test_who_posts_outcomes(authorization, keys, pages, expected):
    if expected is None:
        with pytest.raises(HTTPException) as raised:
            poster_of(authorization, keys, pages)
        assert raised.value.status_code == 401 and "write key" in raised.value.detail
    else:
        assert poster_of(authorization, keys, pages) == expected


# ----------------------------------------------------------------------------- over HTTP
def floors_ids(client, placement: str = "top") -> dict[str, str]:
    """Variant → (modelVersion without its id, floors id) of the placement's floors document."""
    doc = client.get(f"/v1/prebid/floors?placement={placement}&bidders=true", headers={"Origin": PAGE})
    assert doc.status_code == 200, doc.text
    out = {}
    for group in doc.json()["modelGroups"]:
        version, mark, fid = group["modelVersion"].rpartition(ID_MARK)
        assert mark and is_floors_id(fid) and fid.startswith(version.split(":")[0] + ".")
        out[version.split(":")[0]] = (version, fid)
    return out


def page_events(fid: str | None, n: int, *, start: int = 0, prefix: str = "a", **context) -> list[dict]:
    """Events as adbandit-prebid.js posts them: two bidders per auction, ``fid`` as decision_id."""
    rng = np.random.default_rng(start)
    events = []
    for i in range(start, start + n):
        for bidder in ("alpha", "beta"):
            floor = round(float(rng.uniform(0.5, 3.0)), 4)
            filled = bool(rng.random() < 0.6)
            event = {"event_id": f"pb:{prefix}{i}:top:{bidder}", "ts": round(time.time(), 3), "placement": "top",
                     "network": bidder, "floor_cpm": floor, "filled": filled,
                     "revenue_cpm": round(floor * 1.3, 4) if filled else 0,
                     "context": {"prebid_event": "bidResponse" if filled else "noBid", **context}}  # fmt: skip
            if fid is not None:
                event["decision_id"] = fid
            events.append(event)
    return events


@pytest.fixture
def page_service(make_client):
    """A service with a write key, a Prebid placement ``top`` running champion 70 / challenger 30
    (static policies: exact counts), challengers publishing their own floors after 40 events."""
    client = make_client(api_key=WRITE_KEY, prebid_cors_origins=PAGE, prebid_min_events=40, default_policy="static")
    assert client.put("/v1/placements/top", json=BODY, headers=AUTH).status_code == 201
    assert client.put("/v1/placements/top/experiment", json=EXPERIMENT, headers=AUTH).status_code == 200
    return client


def report(client) -> dict[str, int]:
    client.app.state.store.flush()
    variants = client.get("/v1/placements/top/experiment", headers=AUTH)
    return {name: v["requests"] for name, v in variants.json()["variants"].items()}


def post_from_page(client, events: list[dict]):
    """A page's POST: its origin, no Authorization header."""
    return client.post("/v1/outcomes", json=events, headers={"Origin": PAGE})


def test_a_challenger_learns_from_the_prebid_auctions_of_its_own_floors(page_service):
    client = page_service
    ids = floors_ids(client)
    # Too little data: the challenger publishes the champion's floors, under its own signed id.
    assert ids["challenger"][0].startswith("challenger:fallback=champion:")
    reply = post_from_page(client, page_events(ids["challenger"][1], 25))
    assert reply.status_code == 200 and reply.json() == {"accepted": 50, "duplicates": 0, "rejected": []}
    assert reply.headers["access-control-allow-origin"] == PAGE
    assert report(client) == {"champion": 0, "challenger": 50}  # its slice teaches it, not the champion

    ids = floors_ids(client)  # enough data now: it publishes its own floors
    assert not ids["challenger"][0].startswith("challenger:fallback")
    alloc = client.get("/v1/placements/top/allocation?variant=challenger", headers=AUTH)
    before = alloc.json()["effective_events"]
    assert post_from_page(client, page_events(ids["challenger"][1], 30, start=100)).json()["accepted"] == 60
    assert post_from_page(client, page_events(ids["champion"][1], 10, start=200)).json()["accepted"] == 20
    assert report(client) == {"champion": 20, "challenger": 110}
    after = client.get("/v1/placements/top/allocation?variant=challenger", headers=AUTH)
    assert after.json()["effective_events"] == pytest.approx(before + 60)

    # The archive logs each event under its variant: propensity 1 for the variant's own floors
    # (every bidder is called, the group fixes the rule's floor), none for the fallback's.
    client.post("/v1/admin/snapshot", headers=AUTH)
    frame = pl.read_parquet(sorted((Path(client.app.state.settings.state_dir) / "outcomes").glob("*.parquet")))
    own = frame.filter(pl.col("variant") == "challenger")
    assert own.height == 110
    assert own["propensity"].is_nan().sum() == 50 and (own["propensity"].drop_nans() == 1.0).all()
    assert (own["floor_propensity"].drop_nans() == 1.0).all()


def test_auctions_prebid_ran_without_floors_teach_the_champion_without_propensities(page_service):
    ids = floors_ids(page_service)
    events = page_events(ids["challenger"][1], 5, prebid_floors_skipped=True)
    assert post_from_page(page_service, events).json()["accepted"] == 10
    assert report(page_service) == {"champion": 10, "challenger": 0}


def test_with_the_write_key_set_a_page_posts_without_it_and_bad_credentials_say_what_to_do(page_service):
    client = page_service
    fid = floors_ids(client)["champion"][1]
    # Absent credential: no key and no floors id → 401 naming both ways in.
    for body in ([], page_events(None, 2)):
        refused = post_from_page(client, body)
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == PAGE
        detail = refused.json()["detail"]
        assert "floors id" in detail and "Authorization: Bearer <write key>" in detail
    # Forged credential: every id fails → 403 saying to fetch the floors again.
    forged = post_from_page(client, page_events(_flip(fid, 5), 2))
    assert forged.status_code == 403 and "signature does not verify" in forged.json()["detail"]
    assert "GET /v1/prebid/floors" in forged.json()["detail"]
    # A wrong key is a wrong key, even from a page.
    wrong = client.post("/v1/outcomes", json=page_events(fid, 1), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    # Mixed batch: per-event errors, the good ones learned.
    mixed = [*page_events(fid, 2, prefix="ok"), *page_events(None, 1, prefix="none")]
    mixed += page_events(_flip(fid, 5), 1, prefix="bad")
    reply = post_from_page(client, mixed)
    assert reply.status_code == 200
    body = reply.json()
    assert body["accepted"] == 4 and [r["index"] for r in body["rejected"]] == [4, 5, 6, 7]
    assert all("without the write key" in r["error"] for r in body["rejected"][:2])
    assert all("not a floors id of this service" in r["error"] for r in body["rejected"][2:])
    assert report(client) == {"champion": 4, "challenger": 0}
    refused = client.app.state.store.metrics()["events_refused_floors_id_total"]
    assert refused == 4 + 4 + 4  # without an id, forged, then 2 + 2 in the mixed batch
    # A server with the write key posts anything, as before.
    served = client.post("/v1/outcomes", json=page_events(None, 1, prefix="srv"),
                         headers=AUTH)  # fmt: skip
    assert served.json()["accepted"] == 2


def test_expired_or_unknown_variant_ids_are_rejected_by_name_and_teach_nothing(page_service, make_client):
    client = page_service
    key = (Path(client.app.state.settings.state_dir) / "decision.key").read_bytes()
    old = DecisionSigner(key).issue_floors("challenger", "challenger:v1", issued_at=time.time() - 7 * 3600)
    gone = DecisionSigner(key).issue_floors("holdout", "holdout:v1", issued_at=time.time())
    # Even with the write key: an id that does not verify rejects its event (nothing learned).
    reply = client.post("/v1/outcomes", json=page_events(old, 1) + page_events(gone, 1, prefix="g"), headers=AUTH)
    errors = [r["error"] for r in reply.json()["rejected"]]
    assert reply.json()["accepted"] == 0 and len(errors) == 4
    assert "expired" in errors[0] and "ADBANDIT_PREBID_ID_MAX_AGE_S" in errors[0]
    assert "fetch its floors again" in errors[0]
    assert "'holdout'" in errors[2] and "not in the experiment" in errors[2]
    assert report(client) == {"champion": 0, "challenger": 0}


def test_pages_may_be_refused_altogether(make_client):
    client = make_client(api_key=WRITE_KEY, prebid_page_outcomes=False)
    assert client.put("/v1/placements/top", json=BODY, headers=AUTH).status_code == 201
    fid = floors_ids(client)["champion"][1]
    refused = client.post("/v1/outcomes", json=page_events(fid, 1))
    assert refused.status_code == 401 and "write key" in refused.json()["detail"]


def test_without_a_write_key_events_with_and_without_floors_ids_are_accepted(make_client):
    client = make_client(default_policy="static")
    assert client.put("/v1/placements/top", json=BODY).status_code == 201
    fid = floors_ids(client)["champion"][1]
    reply = client.post("/v1/outcomes", json=page_events(fid, 2) + page_events(None, 2, prefix="n"))
    assert reply.json() == {"accepted": 8, "duplicates": 0, "rejected": []}
