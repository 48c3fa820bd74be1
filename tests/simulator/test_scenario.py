"""Scenario files: bundled ones load; bad ones fail with a message naming the field."""

from __future__ import annotations

import copy
import tomllib

import pytest

from bandit.errors import InvalidConfig
from simulator import Scenario, list_scenarios, load_scenario
from simulator.scenario import SCENARIO_DIR

REQUIRED = {
    "stationary",
    "segments",
    "drift",
    "many_networks",
    "sparse",
    "contract_shares",
    "seasonality",
    "new_network",
    "core_stationary",
    "core_drift",
}


def base() -> dict:
    with open(SCENARIO_DIR / "segments.toml", "rb") as fh:
        body = tomllib.load(fh)
    body["events"] = [{"at_hour": 2.0, "kind": "price_shift", "network": "admob", "factor": 0.5}]
    body["seasonality"] = {"demand_amplitude": 0.3}
    body["networks"][0]["min_share"] = 0.1
    return body


def set_path(body: dict, path: tuple, value: object) -> dict:
    body = copy.deepcopy(body)
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


class _Delete:
    """Marks a field to delete (its repr names it, so test ids are the same in every process)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()

BAD = [
    (("networks", 2, "auction"), "third", r"^networks\[2\]\.auction: must be 'first' or 'second'"),
    (("networks", 0, "bidders"), -1.0, r"^networks\[0\]\.bidders: must lie in"),
    (("networks", 0, "bidders"), "many", r"^networks\[0\]\.bidders: must be a number"),
    (("networks", 0, "bidders"), DELETE, r"^networks\[0\]\.bidders: is required"),
    (("networks", 1, "value_log_sds"), [0.5], r"^networks\[1\]\.value_log_sds: .*equal lengths"),
    (
        ("networks", 1, "value_log_sds"),
        [0.5, -0.1],
        r"^networks\[1\]\.value_log_sds: entry 1 must be > 0",
    ),
    (
        ("networks", 3, "value_log_means"),
        [0.1, 12.0],
        r"^networks\[3\]\.value_log_means: log CPM means",
    ),
    (("networks", 0, "floor_max_cpm"), 2000.0, r"^networks\[0\]\.floor_max_cpm: must lie in"),
    (("networks", 0, "dispersion"), -1.5, r"^networks\[0\]\.dispersion: must lie in"),
    (("networks", 0, "dispersion"), -0.5, r"^networks\[0\]\.dispersion: must be -1 \(a single bidder\) or >= 0"),
    (("networks", 0, "dispersion"), -1.0, r"^networks\[0\]\.bidders: is the chance that the single bidder bids"),
    (
        ("networks", 0, "shading"),
        0.8,
        r"^networks\[0\]\.shading: applies to first-price networks only",
    ),
    (("networks", 1, "shading"), 1.5, r"^networks\[1\]\.shading: must lie in"),
    (("networks", 0, "bidder"), 2.0, r"^networks\[0\]: unknown fields \['bidder'\]"),
    (("networks", 0, "max_share"), 0.05, r"^networks\[0\]\.max_share: must be >= min_share"),
    (("networks", 1, "id"), "admob", r"^networks: network ids must be unique"),
    (("segments", 0, "share"), 0.5, r"^segments: shares must sum to 1"),
    (("segments", 1, "context"), {"country": "KR"}, r"^segments\[1\]\.context: must give exactly"),
    (
        ("segments", 2, "value_mult"),
        {"nobody": 2.0},
        r"^segments\[2\]\.value_mult: unknown networks",
    ),
    (("events", 0, "network"), "nobody", r"^events\[0\]\.network: unknown network 'nobody'"),
    (("events", 0, "kind"), "explode", r"^events\[0\]\.kind: must be 'price_shift' or"),
    (("events", 0, "factor"), 0.0, r"^events\[0\]\.factor: must lie in \(0"),
    (("seasonality", "traffic"), [1.0] * 23, r"^seasonality\.traffic: must have 24 entries"),
    (("seasonality", "traffic_amplitude"), 1.5, r"^seasonality\.traffic_amplitude: must lie in"),
    (("requests_per_hour",), 0, r"^requests_per_hour: must lie in \(0"),
    (("shock_sd",), "big", r"^shock_sd: must be a number"),
    (("start",), "yesterday", r"^start: must be an ISO 8601 time"),
    (("segment_by",), [], r"^segment_by: must name the context fields"),
    (("networks",), [], r"^networks: must list at least one network"),
    (("colour",), "blue", r"^scenario: unknown fields \['colour'\]"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    BAD,
    ids=[".".join(map(str, b[0])) + f"={b[1]!r}"[:30] for b in BAD],
)
def test_bad_scenario_names_the_field(path, value, message):
    body = set_path(base(), path, value)
    with pytest.raises(InvalidConfig, match=message):
        Scenario.from_dict(body)


def test_base_of_the_table_is_valid():
    sc = Scenario.from_dict(base())
    assert sc.events[0].network == 0 and len(sc.segments) == 4


def test_share_contract_is_checked_as_a_placement():
    body = base()
    for n in body["networks"]:
        n["min_share"] = 0.3
    with pytest.raises(InvalidConfig, match=r"^networks: .*min_share of all networks sums to 1\.2"):
        Scenario.from_dict(body)


def test_load_from_path_and_by_name(tmp_path):
    assert REQUIRED <= set(list_scenarios())
    by_name = load_scenario("segments")
    path = SCENARIO_DIR / "segments.toml"
    assert load_scenario(path) == by_name == load_scenario(str(path))
    assert by_name.segment_keys() == ("KR|android", "KR|ios", "US|ios", "JP|android")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[networks]]\nid = "a"\nauction = "dutch"\n', encoding="utf-8")
    with pytest.raises(InvalidConfig, match=r"^networks\[0\]\.auction: must be 'first' or 'second', got 'dutch'"):
        load_scenario(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n", encoding="utf-8")
    with pytest.raises(InvalidConfig, match="not valid TOML"):
        load_scenario(broken)
    with pytest.raises(InvalidConfig, match="not found; bundled scenarios"):
        load_scenario("no_such_scenario")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_bundled_scenario_is_consistent(name):
    sc = load_scenario(name)
    placement = sc.placement()
    assert placement.network_ids == sc.network_ids
    assert all(n.auction in ("first", "second") for n in sc.networks)
    assert sum(s.share for s in sc.segments) == pytest.approx(1.0)


def grid_base() -> dict:
    with open(SCENARIO_DIR / "longtail.toml", "rb") as fh:
        return tomllib.load(fh)


BAD_GRID = [
    (("segment_grid", "values"), [24, 3], r"^segment_grid\.values: must have 3 entries"),
    (("segment_grid", "values"), [2.5, 3, 4], r"^segment_grid\.values: must be whole numbers"),
    (("segment_grid", "values"), [100, 100, 100], r"^segment_grid\.values: make at most 100000 segments"),
    (("segment_grid", "value_sd"), [0.1, -0.1, 0.1], r"^segment_grid\.value_sd: entry 1 must be >= 0"),
    (("segment_grid", "zipf"), DELETE, r"^segment_grid\.zipf: is required"),
    (("segment_grid", "colour"), 1, r"^segment_grid: unknown fields \['colour'\]"),
    (("segments",), [{"context": {"country": "a", "os": "b", "app_version": "c"}, "share": 1.0}], r"either"),
    (("segment_by",), [], r"^segment_by: must name the context fields"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    BAD_GRID,
    ids=[".".join(map(str, b[0])) + f"={b[1]!r}"[:30] for b in BAD_GRID],
)
def test_bad_segment_grid_names_the_field(path, value, message):
    with pytest.raises(InvalidConfig, match=message):
        Scenario.from_dict(set_path(grid_base(), path, value))


def test_segment_grid_makes_every_combination_with_zipf_shares():
    sc = load_scenario("longtail")
    assert len(sc.segments) == 24 * 3 * 16
    assert len(set(sc.segment_keys())) == len(sc.segments)
    assert sc.segment_keys()[0] == "country0|os0|app_version0"
    shares = sorted((s.share for s in sc.segments), reverse=True)
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] / shares[9] == pytest.approx(10**1.1)  # Zipf with exponent 1.1
    # Drawn once from the seed: the same file gives the same market, another seed another one.
    assert load_scenario("longtail") == sc
    other = Scenario.from_dict(set_path(grid_base(), ("segment_grid", "seed"), 9))
    assert other.segments != sc.segments
