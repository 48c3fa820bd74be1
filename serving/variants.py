"""Online A/B experiments: variants of a placement, stable traffic assignment, decision ids.

Each placement runs an :class:`ExperimentConfig`: named variants, each a policy with a
share of the traffic in percent (e.g. champion 80, challenger 15, holdout 5 with the
``static`` policy). A request is assigned by hashing its user id (or, without one, its
request id) with the placement id to a point in ``[0, 100)``; the same user therefore
always lands in the same variant of a placement while the split is unchanged.

The variant is carried in the signed ``decision_id`` (``"<variant>.<signed payload>"``,
:mod:`serving.decision_ids`) so that an outcome event is learned by the variant that made
the decision and by no other.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import bandit
from bandit.errors import InvalidConfig

#: The variant that gets events without a decision id and the one others are compared to.
CHAMPION = "champion"
#: Traffic percentages must sum to 100 within this tolerance.
TRAFFIC_TOLERANCE = 1e-6
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HASH_SCALE = 100.0 / 2.0**64


@dataclass(frozen=True)
class VariantConfig:
    """One arm of a placement's experiment: a policy (``bandit.POLICIES`` name and its
    parameters) and the percentage of the placement's traffic it decides."""

    name: str
    traffic: float
    policy: str = "ts_gmm"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _VARIANT_NAME.match(self.name):
            raise InvalidConfig(f"variant name must be 1-64 letters, digits, '_' or '-', got {self.name!r}")
        traffic = self.traffic
        if isinstance(traffic, bool) or not isinstance(traffic, (int, float)):
            raise InvalidConfig(f"variant {self.name!r}: traffic must be a number, got {traffic!r}")
        if not 0.0 <= float(traffic) <= 100.0:
            raise InvalidConfig(f"variant {self.name!r}: traffic must be in [0, 100] percent")
        if self.policy not in bandit.POLICIES:
            raise InvalidConfig(
                f"variant {self.name!r}: unknown policy {self.policy!r}; choose one of {sorted(bandit.POLICIES)}"
            )
        if not isinstance(self.params, Mapping):
            raise InvalidConfig(f"variant {self.name!r}: params must be an object")
        try:
            params = json.loads(json.dumps(dict(self.params)))
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"variant {self.name!r}: params must be JSON values: {exc}") from None
        object.__setattr__(self, "traffic", float(traffic))
        object.__setattr__(self, "params", params)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "traffic": self.traffic,
            "policy": self.policy,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, body: Mapping) -> VariantConfig:
        if not isinstance(body, Mapping):
            raise InvalidConfig("a variant must be an object with name and traffic")
        unknown = set(body) - {"name", "traffic", "policy", "params"}
        if unknown:
            raise InvalidConfig(f"variant has unknown fields {sorted(unknown)}")
        missing = [k for k in ("name", "traffic") if k not in body]
        if missing:
            raise InvalidConfig(f"variant lacks fields {missing}")
        return cls(
            name=body["name"],
            traffic=body["traffic"],
            policy=body.get("policy", "ts_gmm"),
            params=body.get("params") or {},
        )

    def same_learner(self, other: VariantConfig) -> bool:
        """True when ``other`` runs the same policy with the same parameters (the traffic
        share may differ): its learned state and outcome counters carry over."""
        return self.name == other.name and self.policy == other.policy and self.params == other.params


def _default_variants() -> tuple[VariantConfig, ...]:
    return (VariantConfig(CHAMPION, 100.0),)


@dataclass(frozen=True)
class ExperimentConfig:
    """The variants of one placement. Percentages sum to 100; names are unique.

    The champion is the variant named ``"champion"`` or, when none is, the first one.
    """

    variants: tuple[VariantConfig, ...] = field(default_factory=_default_variants)

    def __post_init__(self) -> None:
        variants = tuple(self.variants)
        if not variants or not all(isinstance(v, VariantConfig) for v in variants):
            raise InvalidConfig("an experiment needs at least one variant")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidConfig(f"variant names must be unique; repeated: {dup}")
        total = sum(v.traffic for v in variants)
        if abs(total - 100.0) > TRAFFIC_TOLERANCE:
            raise InvalidConfig(f"variant traffic must sum to 100 percent, got {total:g}")
        object.__setattr__(self, "variants", variants)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @property
    def champion(self) -> str:
        names = self.names
        return CHAMPION if CHAMPION in names else names[0]

    def variant(self, name: str) -> VariantConfig:
        for v in self.variants:
            if v.name == name:
                return v
        raise InvalidConfig(f"no variant {name!r}; variants: {list(self.names)}")

    def cutoffs(self) -> list[float]:
        """Upper ends of the variants' ranges in ``[0, 100)``, in variant order."""
        out, acc = [], 0.0
        for v in self.variants:
            acc += v.traffic
            out.append(acc)
        out[-1] = 100.0
        return out

    def assign(self, point: float) -> str:
        """The variant owning ``point`` in ``[0, 100)`` (zero-traffic variants own nothing)."""
        return self.names[min(bisect_right(self.cutoffs(), point), len(self.variants) - 1)]

    def to_dict(self) -> dict:
        return {"variants": [v.to_dict() for v in self.variants]}

    @classmethod
    def from_dict(cls, body: Mapping) -> ExperimentConfig:
        if not isinstance(body, Mapping) or not isinstance(body.get("variants"), Sequence):
            raise InvalidConfig("an experiment must be an object with a list of variants")
        return cls(tuple(VariantConfig.from_dict(v) for v in body["variants"]))

    @classmethod
    def single(cls, policy: str, params: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """One champion variant taking all the traffic."""
        return cls((VariantConfig(CHAMPION, 100.0, policy, dict(params or {})),))


class Assigner:
    """Fast variant assignment for one placement's experiment (precomputed cutoffs)."""

    __slots__ = ("_cutoffs", "_last", "_names", "_salt", "_single")

    def __init__(self, placement_id: str, experiment: ExperimentConfig) -> None:
        self._salt = placement_id.encode() + b"\x00"
        self._cutoffs = experiment.cutoffs()
        self._names = experiment.names
        self._last = len(self._names) - 1
        full = [v.name for v in experiment.variants if v.traffic >= 100.0]
        self._single = full[0] if full else None

    def __call__(self, key: str) -> str:
        if self.single is not None:
            return self.single
        return self._names[min(bisect_right(self._cutoffs, assignment_point(self._salt, key)), self._last)]

    @property
    def single(self) -> str | None:
        """The variant taking all traffic, if one does (then no hashing is needed)."""
        return self._single


def assignment_point(salt: bytes, key: str) -> float:
    """Stable point in ``[0, 100)`` of a user or request id: 64-bit blake2b of salt + key."""
    digest = hashlib.blake2b(salt + str(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") * _HASH_SCALE


#: Propensities travel inside decision ids as 16-bit codes of -log2(p) in steps of 1/2048:
#: relative error < 0.04%, down to p = 2^-32. A decision id is then self-describing for
#: off-policy evaluation, with no state kept by the service and nothing lost on restart
#: (:mod:`serving.decision_ids` packs and signs them).
_LOG2_STEPS = 2048.0
_MAX_CODE = 65535


def propensity_code(p: float) -> int:
    """16-bit code of a probability in (0, 1]."""
    if not p > 0.0:
        return _MAX_CODE
    return min(max(round(-math.log2(min(p, 1.0)) * _LOG2_STEPS), 0), _MAX_CODE)


def propensity_codes(p: np.ndarray) -> np.ndarray:
    """Vectorised :func:`propensity_code` ([n] → uint16 [n])."""
    with np.errstate(divide="ignore"):
        code = np.rint(-np.log2(np.clip(p, 0.0, 1.0)) * _LOG2_STEPS)
    return np.clip(np.nan_to_num(code, nan=_MAX_CODE, posinf=_MAX_CODE), 0, _MAX_CODE).astype(np.uint16)


def stable_seed(placement_id: str, variant: str) -> int:
    """A seed for a variant's policy that replay reproduces (64 bits of blake2b)."""
    digest = hashlib.blake2b(f"{placement_id}\x00{variant}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
