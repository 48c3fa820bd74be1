"""Invalid inputs are rejected with the project's own error types and a message saying why."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from bandit import (
    MAX_CPM,
    EventBatch,
    InvalidConfig,
    InvalidOutcome,
    OutcomeEvent,
    PlacementConfig,
    UnknownNetwork,
)
from bandit.io import batch_from_frame
from bandit.types import NetworkConfig, parse_ts

GOOD_BODY = {
    "networks": [
        {
            "id": "alpha",
            "floor_min_cpm": 0.0,
            "floor_max_cpm": 50.0,
            "min_share": 0.0,
            "max_share": 1.0,
        },
        {
            "id": "beta",
            "floor_min_cpm": 0.5,
            "floor_max_cpm": 20.0,
            "min_share": 0.1,
            "max_share": 0.8,
        },
    ],
    "segment_by": ["country", "os"],
    "currency": "USD",
}

GOOD_EVENT = {
    "event_id": "e1",
    "decision_id": "d1",
    "ts": "2026-11-21T10:00:00Z",
    "placement": "p1",
    "network": "alpha",
    "floor_cpm": 1.37,
    "filled": True,
    "revenue_cpm": 2.05,
    "context": {"country": "KR", "os": "ios"},
}


def network(**changes: object) -> dict:
    return {**GOOD_BODY["networks"][0], **changes}


def body(**changes: object) -> dict:
    return {**GOOD_BODY, **changes}


def event(**changes: object) -> dict:
    return {**GOOD_EVENT, **changes}


CONFIG_CASES = [
    ("floor_min NaN", body(networks=[network(floor_min_cpm=math.nan)]), "finite"),
    ("floor_max inf", body(networks=[network(floor_max_cpm=math.inf)]), "finite"),
    ("floor_min negative", body(networks=[network(floor_min_cpm=-1.0)]), ">= 0"),
    ("floor_max absurd", body(networks=[network(floor_max_cpm=MAX_CPM * 2)]), f"<= {MAX_CPM:g}"),
    ("floor not a number", body(networks=[network(floor_max_cpm="5")]), "must be a number"),
    (
        "floor_max < floor_min",
        body(networks=[network(floor_min_cpm=5.0, floor_max_cpm=2.0)]),
        "floor_max_cpm",
    ),
    ("min_share > 1", body(networks=[network(min_share=1.5)]), "[0, 1]"),
    ("max_share < 0", body(networks=[network(max_share=-0.1)]), "[0, 1]"),
    ("max_share < min_share", body(networks=[network(min_share=0.6, max_share=0.4)]), "max_share"),
    (
        "min shares sum > 1",
        body(networks=[network(id="a", min_share=0.6), network(id="b", min_share=0.6)]),
        "min_share of all networks sums",
    ),
    (
        "max shares sum < 1",
        body(networks=[network(id="a", max_share=0.3), network(id="b", max_share=0.3)]),
        "max_share of all networks sums",
    ),
    ("duplicate ids", body(networks=[network(id="a"), network(id="a")]), "unique"),
    ("no networks", body(networks=[]), "at least one network"),
    ("networks not a list", body(networks="alpha"), "list"),
    ("network without id", body(networks=[{"floor_max_cpm": 3.0}]), "'id'"),
    ("empty network id", body(networks=[network(id="")]), "network id"),
    ("unknown network field", body(networks=[network(bid_cpm=3.0)]), "unknown fields"),
    ("bad auction", body(networks=[network(auction="dutch")]), "auction"),
    ("bad currency length", body(currency="DOLLAR"), "currency"),
    ("bad currency digits", body(currency="U5D"), "currency"),
    ("segment_by a string", body(segment_by="country"), "segment_by"),
    ("segment_by repeated", body(segment_by=["os", "os"]), "segment_by"),
    ("segment_by empty name", body(segment_by=["country", ""]), "segment_by"),
    ("body not an object", ["alpha"], "JSON object"),
]


@pytest.mark.parametrize(
    ("case", "bad", "fragment"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES]
)
def test_placement_config_rejects(case: str, bad: object, fragment: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        PlacementConfig.from_dict("p1", bad)
    assert fragment in str(info.value)


def test_placement_id_is_validated() -> None:
    with pytest.raises(InvalidConfig, match="placement id"):
        PlacementConfig.from_dict("", GOOD_BODY)


EVENT_CASES = [
    ("floor NaN", event(floor_cpm=math.nan), "floor_cpm must be a finite number"),
    ("floor inf", event(floor_cpm=math.inf), "floor_cpm must be a finite number"),
    ("floor negative", event(floor_cpm=-0.5), "floor_cpm must be >= 0"),
    ("floor absurd", event(floor_cpm=MAX_CPM + 1), "floor_cpm must be <="),
    ("revenue NaN", event(revenue_cpm=math.nan), "revenue_cpm must be a finite number"),
    ("revenue -inf", event(revenue_cpm=-math.inf), "revenue_cpm must be a finite number"),
    ("revenue negative", event(revenue_cpm=-2.0), "revenue_cpm must be >= 0"),
    ("revenue absurd", event(revenue_cpm=1e9), "revenue_cpm must be <="),
    ("revenue a string", event(revenue_cpm="2.05"), "revenue_cpm must be a number"),
    (
        "revenue without fill",
        event(filled=False, revenue_cpm=2.05),
        "revenue_cpm must be 0 when filled is false",
    ),
    ("filled not a bool", event(filled="yes"), "filled must be true or false"),
    ("filled as 1", event(filled=1), "filled must be true or false"),
    ("bad ts string", event(ts="yesterday"), "ISO 8601"),
    ("bad ts date", event(ts="2026-13-45T10:00:00Z"), "ISO 8601"),
    ("ts out of range", event(ts=-5.0), "between 1970 and 2100"),
    ("ts bool", event(ts=True), "ts must be"),
    ("ts list", event(ts=[2026]), "ts must be"),
    ("empty event_id", event(event_id=""), "event_id"),
    ("empty network", event(network=""), "network must be"),
    ("context not an object", event(context=["KR"]), "context"),
    (
        "missing filled",
        {k: v for k, v in GOOD_EVENT.items() if k != "filled"},
        "missing required fields",
    ),
    ("not an object", ["e1"], "JSON object"),
]


@pytest.mark.parametrize(("case", "bad", "fragment"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_outcome_event_rejects(case: str, bad: object, fragment: str) -> None:
    with pytest.raises(InvalidOutcome) as info:
        OutcomeEvent.from_dict(bad)
    assert fragment in str(info.value)


def test_good_event_parses() -> None:
    ev = OutcomeEvent.from_dict(GOOD_EVENT)
    assert ev.ts == pytest.approx(1795255200.0)
    assert ev.reward == 2.05
    assert OutcomeEvent.from_dict(event(filled=False, revenue_cpm=0.0)).reward == 0.0
    assert parse_ts("2026-11-21T19:00:00+09:00") == ev.ts


def test_unknown_network_in_an_event() -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    ev = OutcomeEvent.from_dict(event(network="gamma"))
    with pytest.raises(UnknownNetwork, match=r"'gamma'.*known networks"):
        EventBatch.from_events(cfg, [OutcomeEvent.from_dict(GOOD_EVENT), ev])
    with pytest.raises(UnknownNetwork, match="gamma"):
        cfg.network_index("gamma")


def test_event_of_another_placement_is_rejected() -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    with pytest.raises(InvalidOutcome, match="placement 'p2'"):
        EventBatch.from_events(cfg, [OutcomeEvent.from_dict(event(placement="p2"))])


def good_columns(n: int = 6) -> dict:
    return {
        "segments": ("KR|ios", "US|android"),
        "segment_index": np.arange(n) % 2,
        "network": np.arange(n) % 2,
        "floor_cpm": np.full(n, 1.0),
        "filled": np.ones(n, dtype=bool),
        "revenue_cpm": np.full(n, 2.0),
        "ts": np.full(n, 1.8e9),
    }


def with_row(column: str, row: int, value: object) -> dict:
    cols = good_columns()
    arr = np.array(cols[column], dtype=float if column not in ("filled",) else bool)
    if column in ("segment_index", "network"):
        arr = arr.astype(np.int64)
    arr[row] = value
    cols[column] = arr
    return cols


ARRAY_CASES = [
    ("floor NaN", with_row("floor_cpm", 3, math.nan), "row 3: floor_cpm must be a finite number"),
    ("floor negative", with_row("floor_cpm", 2, -1.0), "row 2: floor_cpm must be >= 0"),
    ("revenue absurd", with_row("revenue_cpm", 4, 5e3), "row 4: revenue_cpm must be <="),
    ("revenue inf", with_row("revenue_cpm", 1, math.inf), "row 1: revenue_cpm must be a finite"),
    (
        "revenue without fill",
        with_row("filled", 5, False),
        "row 5: revenue_cpm must be 0 when filled",
    ),
    ("network out of range", with_row("network", 1, 7), "row 1: network index"),
    ("negative network", with_row("network", 0, -1), "row 0: network index"),
    ("segment out of range", with_row("segment_index", 2, 9), "row 2: bad segment index"),
    ("ts NaN", with_row("ts", 3, math.nan), "row 3: ts must be"),
    ("ts far future", with_row("ts", 0, 9e9), "row 0: ts must be"),
]


@pytest.mark.parametrize(("case", "cols", "fragment"), ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES])
def test_event_batch_from_arrays_rejects_and_names_the_row(
    case: str, cols: dict, fragment: str
) -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    with pytest.raises(InvalidOutcome) as info:
        EventBatch.from_arrays(cfg, **cols)
    assert fragment in str(info.value)


def test_event_batch_columns_must_have_equal_length() -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    cols = good_columns()
    cols["ts"] = cols["ts"][:-1]
    with pytest.raises(InvalidOutcome, match="column ts has 5 rows, expected 6"):
        EventBatch.from_arrays(cfg, **cols)


def good_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "placement": ["p1"] * 4,
            "network": ["alpha", "beta", "alpha", "beta"],
            "floor_cpm": [1.0, 1.0, 2.0, 0.5],
            "filled": [True, False, True, True],
            "revenue_cpm": [1.5, 0.0, 2.0, 0.7],
            "ts": ["2026-11-21T10:00:00Z"] * 4,
            "context": [{"country": "KR", "os": "ios"}] * 4,
        }
    )


FRAME_CASES = [
    (
        "negative floor",
        lambda f: f.with_columns(pl.Series("floor_cpm", [1.0, 1.0, -2.0, 0.5])),
        InvalidOutcome,
        "row 2: floor_cpm must be >= 0",
    ),
    (
        "revenue without fill",
        lambda f: f.with_columns(pl.Series("revenue_cpm", [1.5, 0.3, 2.0, 0.7])),
        InvalidOutcome,
        "row 1: revenue_cpm must be 0 when filled is false",
    ),
    (
        "absurd revenue",
        lambda f: f.with_columns(pl.Series("revenue_cpm", [1.5, 0.0, 2.0, 7e3])),
        InvalidOutcome,
        "row 3: revenue_cpm must be <=",
    ),
    (
        "unknown network",
        lambda f: f.with_columns(pl.Series("network", ["alpha", "gamma", "alpha", "beta"])),
        UnknownNetwork,
        "'gamma'",
    ),
    (
        "bad ts string",
        lambda f: f.with_columns(pl.Series("ts", ["2026-11-21T10:00:00Z", "soon", "x", "y"])),
        InvalidOutcome,
        "ts has missing or unparseable",
    ),
    ("missing column", lambda f: f.drop("filled"), InvalidOutcome, "lacks columns ['filled']"),
    (
        "null floor",
        lambda f: f.with_columns(pl.Series("floor_cpm", [1.0, None, 2.0, 0.5])),
        InvalidOutcome,
        "floor_cpm has 1 missing",
    ),
    (
        "filled not boolean",
        lambda f: f.with_columns(pl.Series("filled", [1, 0, 1, 1])),
        InvalidOutcome,
        "filled must be boolean",
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "error", "fragment"), FRAME_CASES, ids=[c[0] for c in FRAME_CASES]
)
def test_batch_from_frame_rejects(case: str, mutate, error: type[Exception], fragment: str) -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    with pytest.raises(error) as info:
        batch_from_frame(cfg, mutate(good_frame()))
    assert fragment in str(info.value)


def test_batch_from_frame_reads_a_good_frame() -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    frame = pl.concat([good_frame(), good_frame().with_columns(pl.lit("p2").alias("placement"))])
    batch = batch_from_frame(cfg, frame)
    assert len(batch) == 4  # rows of the other placement are skipped
    assert batch.segments == ("KR|ios",)
    assert batch.network.tolist() == [0, 1, 0, 1]
    assert batch.filled.tolist() == [True, False, True, True]


def test_placement_config_round_trips() -> None:
    cfg = PlacementConfig.from_dict("p1", GOOD_BODY)
    again = PlacementConfig.from_dict("p1", cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert cfg.to_dict()["networks"][1] == {**GOOD_BODY["networks"][1], "auction": "auto"}
    assert cfg.network_ids == ("alpha", "beta")
    assert cfg.network_index("beta") == 1


def test_defaults_and_normalisation() -> None:
    cfg = PlacementConfig.from_dict("p1", {"networks": [{"id": "house"}], "currency": "krw"})
    assert cfg.currency == "KRW"
    assert cfg.networks[0] == NetworkConfig("house", 0.0, 50.0, 0.0, 1.0, "auto")
    assert cfg.segment_of({"country": "KR"}) == "*"
    seg = PlacementConfig.from_dict("p1", GOOD_BODY)
    assert seg.segment_of({"country": "KR", "os": "ios"}) == "KR|ios"
    assert seg.segment_of({"country": "K|R"}) == "K_R|unknown"
