"""The policy parameter table (bandit/params.py) against the policies it describes."""

from __future__ import annotations

import inspect
import math

import pytest

from bandit import POLICIES, InvalidConfig, PlacementConfig, make_policy
from bandit.params import POLICY_PARAMS, Param, check_params

PLACEMENT = PlacementConfig.from_dict("p", {"networks": [{"id": "a"}, {"id": "b"}]})


def constructor_params(policy: str) -> dict[str, object]:
    """Keyword parameters of a policy's constructor and those of the base it passes ``**kwargs`` to."""
    out = {}
    for cls in POLICIES[policy].__mro__:
        if "__init__" not in vars(cls):
            continue
        sig = inspect.signature(cls.__init__)
        for name, p in sig.parameters.items():
            if p.kind is p.KEYWORD_ONLY and name not in out:
                out[name] = p.default
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return out


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_has_a_table_naming_exactly_its_constructor_params_and_defaults(policy):
    declared = {p.name: p.default for p in POLICY_PARAMS[policy]}
    actual = constructor_params(policy)
    assert set(declared) == set(actual), f"{policy}: table {sorted(declared)} vs constructor {sorted(actual)}"
    for name, default in actual.items():
        if name not in ("seed", "weights", "floors"):
            assert declared[name] == default, (policy, name)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_policy_accepts_every_default_and_both_ends_of_each_range(policy):
    for p in POLICY_PARAMS[policy]:
        if p.kind == "network_map" or p.name == "seed":
            continue
        for value in (p.lo, p.hi):
            if not p.contains(value) or math.isinf(value):
                continue
            value = int(value) if p.kind.startswith("int") else float(value)
            params = check_params(policy, {p.name: value})
            if p.name in ("n_draws", "draws") and value > 1024:
                continue  # allocation-heavy end: checked, not built here
            make_policy(policy, PLACEMENT, **params)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (16, True), (16.0, True), (0, False), (17, False), (2.5, False), (True, False), ("3", False),
     (None, False), (math.nan, False)],
)  # fmt: skip
def test_param_checks_type_and_range(value, ok):
    p = Param("k", "int", 1, 16, "doc")
    if ok:
        assert p.check(value) == int(value)
    else:
        with pytest.raises(InvalidConfig, match=r"k must be"):
            p.check(value)


def test_open_ends_and_unknown_names():
    p = Param("x", "float", 0.0, 1.0, "doc", closed="left")
    assert p.contains(0.0) and not p.contains(1.0) and p.range_text() == "[0, 1)"
    with pytest.raises(InvalidConfig, match=r"unknown parameter\(s\) \['nope'\]; known: \["):
        check_params("ts_gmm", {"nope": 1})
    with pytest.raises(InvalidConfig, match="unknown policy"):
        check_params("magic", {})
