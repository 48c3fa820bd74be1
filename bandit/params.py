"""Policy parameters declared once: name, type, range and meaning, checked in one place.

Each policy's hyperparameters are a table of :class:`Param` (:data:`POLICY_PARAMS`). The
service checks experiment and model-state ``params`` against it (so ``n_draws: 100000``
is a 422 naming the range, not a 74 GiB allocation), and construction, the docs and
tuning search spaces are meant to read the same table (``scikit-learn``'s
``_parameter_constraints``). :func:`check_params` returns the validated values or raises
:class:`bandit.errors.InvalidConfig` with a message that says what to fix.

Pure Python: no numpy, nothing imported from the policies (they may import this module).
Ranges bound the work a policy does: per table refit, memory grows with
``n_draws`` (ts_gmm) or ``draws × floor_levels`` (grid_ts) times the networks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from bandit.errors import InvalidConfig

#: What a parameter holds: an integer, a real number, either of those or ``null``
#: (``"float?"``), or an object mapping network ids to numbers (``"network_map"``).
Kind = Literal["int", "float", "float?", "int?", "network_map"]
#: Which ends of ``[lo, hi]`` belong to the range (scikit-learn's ``Interval.closed``).
Closed = Literal["both", "left", "right", "neither"]

#: Largest seed accepted (numpy's SeedSequence takes any non-negative integer; 64 bits is plenty).
MAX_SEED = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Param:
    """One hyperparameter: ``kind``, the range ``lo``..``hi`` (ends per ``closed``), its
    default and what it means. For ``network_map`` the range applies to every value."""

    name: str
    kind: Kind
    lo: float
    hi: float
    doc: str
    default: Any = None
    closed: Closed = "both"

    def range_text(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{left}{_num(self.lo)}, {_num(self.hi)}{right}"

    def contains(self, x: float) -> bool:
        lo_ok = x >= self.lo if self.closed in ("both", "left") else x > self.lo
        hi_ok = x <= self.hi if self.closed in ("both", "right") else x < self.hi
        return lo_ok and hi_ok

    def check(self, value: Any, where: str = "") -> Any:
        """The validated value (ints stay ints, numbers become floats) or :class:`InvalidConfig`."""
        label = f"{where}{self.name}"
        if self.kind == "network_map":
            if not isinstance(value, Mapping):
                raise InvalidConfig(f"{label} must be an object mapping network ids to numbers, got {value!r}")
            return {str(k): self._number(v, f"{label}[{k!r}]", integer=False) for k, v in value.items()}
        if value is None and self.kind.endswith("?"):
            return None
        return self._number(value, label, integer=self.kind.startswith("int"))

    def _number(self, value: Any, label: str, *, integer: bool) -> float | int:
        if integer:
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # 16.0 from a JSON encoder is 16
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidConfig(f"{label} must be an integer in {self.range_text()}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise InvalidConfig(f"{label} must be a number in {self.range_text()}, got {value!r}")
        if not self.contains(value):
            raise InvalidConfig(f"{label} must be in {self.range_text()}, got {value!r}")
        return value if integer else float(value)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


#: Shared by every policy: time discounting of the statistics (event time) and the seed.
HALF_LIFE_HOURS = Param(
    "half_life_hours", "float", 0.01, math.inf,
    "Half-life of the time discounting of all statistics, in hours of event time (inf: none).",
    default=math.inf,
)  # fmt: skip
SEED = Param("seed", "int?", 0, MAX_SEED, "Seed of the policy's random generator (default: per placement and variant).")
FLOOR_LEVELS = Param("floor_levels", "int", 1, 64, "Floor levels per network (log-spaced within its bounds).", 8)

POLICY_PARAMS: dict[str, tuple[Param, ...]] = {
    "ts_gmm": (
        Param("n_components", "int", 1, 8, "Mixture components per network (K).", 3),
        Param(
            "n_draws",
            "int",
            2,
            1024,
            "Posterior draws of each network's revenue curve (M); refit time grows with it.",
            128,
        ),
        Param("prior_strength", "float", 0.0, 1e4, "Pseudo-requests of the mixture's weak prior.", 2.0, closed="right"),
        Param(
            "model_doubt",
            "float",
            0.0,
            10.0,
            "Typical relative misfit of the mixture's revenue curve; the binned revenue may pull the curve "
            "away from it by up to about twice this (chosen per cell by marginal likelihood).",
            0.2,
            closed="right",
        ),
        Param("curve_length", "float", 0.01, 10.0, "Correlation length of the curve's correction, in log floor.", 0.4),
        Param(
            "floor_jitter",
            "float",
            0.0,
            1.0,
            "Largest sd of the log-normal jitter around each chosen floor (exploration both ways; floor density "
            "for OPE); narrower where a network's revenue peaks sharply (at most 0.05% of its best revenue lost).",
            0.15,
        ),
        Param("explore_floor", "float", 0.0, 0.5, "Base probability of a lower floor (rises when fills stop).", 0.0),
        Param("explore_network", "float", 0.0, 0.5, "Share of traffic spread evenly over all networks.", 0.003),
        Param(
            "typical_cpm",
            "float?",
            0.01,
            1000.0,
            "Prior centre of bid values, CPM (null: geometric middle of the floor bounds).",
            None,
        ),
        Param("change_threshold", "float", 0.0, 1e6, "CUSUM threshold of the change detector (0 turns it off).", 12.0),
        Param("change_forget", "float", 0.0, 1.0, "Share of a cell's history kept when a change is detected.", 0.05),
        Param(
            "level_events",
            "float",
            0.0,
            1e9,
            "Events of an hour of day that move its value level half-way, and the strength of the segment's "
            "common level in each network's (daily cycles; 0 turns levels off).",
            2000.0,
        ),
        Param(
            "refit_share",
            "float",
            0.0,
            1.0,
            "New events, as a share of a (segment, network) cell's weight, that make its table row due for a refit.",
            0.05,
        ),
        Param(
            "refit_max_age_s",
            "float",
            0.0,
            86_400.0,
            "Event-time seconds after which a cell with new events is refit, however few they are.",
            900.0,
        ),
        Param(
            "pool_fields",
            "int",
            0,
            1,
            "1: each segment's prior is predicted from its context fields across segments; 0: the flat pool.",
            1,
        ),
        replace(HALF_LIFE_HOURS, default=48.0),
        SEED,
    ),
    "grid_ts": (
        Param(
            "draws",
            "int",
            16,
            16_384,
            "Monte Carlo posterior draws per table (memory: draws × networks × floor_levels × 8 bytes).",
            1024,
        ),
        FLOOR_LEVELS,
        HALF_LIFE_HOURS,
        SEED,
    ),
    "epsilon_greedy": (
        Param("epsilon", "float", 0.0, 1.0, "Share of decisions spread uniformly over all arms.", 0.1),
        FLOOR_LEVELS,
        HALF_LIFE_HOURS,
        SEED,
    ),
    "ucb1": (
        Param("c", "float", 0.0, 1e6, "Width of the confidence bonus.", 1.0),
        FLOOR_LEVELS,
        HALF_LIFE_HOURS,
        SEED,
    ),
    "static": (
        Param("weights", "network_map", 0.0, 1e12, "Exposure weight per network id (normalised; default equal).", None),
        Param("floors", "network_map", 0.0, 1000.0, "Floor per network id, CPM (default: its floor_min_cpm).", None),
        HALF_LIFE_HOURS,
        SEED,
    ),
}


def check_params(table: tuple[Param, ...] | str, params: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """``params`` validated against ``table`` (or the table of the policy named so).

    Returns the given parameters with their validated values (defaults are not filled in:
    the policy keeps its own). Unknown names, wrong types and values out of range raise
    :class:`InvalidConfig` naming the parameter, its range and the known names.
    """
    if isinstance(table, str):
        if table not in POLICY_PARAMS:
            raise InvalidConfig(f"unknown policy {table!r}; choose one of {sorted(POLICY_PARAMS)}")
        where = where or f"{table} "
        table = POLICY_PARAMS[table]
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidConfig(f"{where}params must be an object, got {type(params).__name__}")
    known = {p.name: p for p in table}
    unknown = sorted(str(k) for k in params if k not in known)
    if unknown:
        raise InvalidConfig(f"{where}params: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return {name: known[name].check(value, f"{where}params.") for name, value in params.items()}


def describe(policy: str) -> list[dict[str, Any]]:
    """The table of a policy as plain dicts (for docs and the API)."""
    return [
        {"name": p.name, "type": p.kind, "range": p.range_text(), "default": p.default, "doc": p.doc}
        for p in POLICY_PARAMS[policy]
    ]
