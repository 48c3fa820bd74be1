"""The service's placement: :class:`bandit.PlacementConfig` plus how each network reports revenue.

Some networks report *net* revenue (after their share), so a filled event may carry a
``revenue_cpm`` below the floor it was given; from a network reporting *gross* revenue
(the default) that is impossible and the event is rejected
(:func:`serving.validation.check_revenue`). The HTTP body declares it per network,
``{"id": "adfit", ..., "revenue": "net"}``; absent means ``"gross"``, so existing
placements keep their meaning.

Stored in the placement's dict as a top-level ``"net_revenue": [network ids]`` (only when
non-empty, so placements without it serialise exactly as before); the core's
``PlacementConfig.from_dict`` ignores that key, so policy states and snapshots stay
readable by :mod:`bandit` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bandit import PlacementConfig
from bandit.errors import InvalidConfig

REVENUE_KINDS = ("gross", "net")


def _core(config: PlacementConfig) -> tuple:
    return (config.id, config.networks, config.segment_by, config.currency)


@dataclass(frozen=True, slots=True)
class ServicePlacement(PlacementConfig):
    """A placement as the service keeps it: ``net_revenue`` holds the ids of the networks
    that report revenue net of their share."""

    net_revenue: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        PlacementConfig.__post_init__(self)  # slots dataclass: no zero-argument super()
        net = frozenset(self.net_revenue)
        unknown = sorted(net - set(self.network_ids))
        if unknown:
            raise InvalidConfig(f"net_revenue names networks {unknown} the placement does not have")
        object.__setattr__(self, "net_revenue", net)

    def __eq__(self, other: object) -> bool:
        # Equal to a plain PlacementConfig with the same fields when no network reports net.
        if not isinstance(other, PlacementConfig):
            return NotImplemented
        theirs = other.net_revenue if isinstance(other, ServicePlacement) else frozenset()
        return _core(self) == _core(other) and self.net_revenue == theirs

    def __hash__(self) -> int:
        return hash((*_core(self), self.net_revenue)) if self.net_revenue else hash(_core(self))

    def reports_net(self, network: str) -> bool:
        return network in self.net_revenue

    def to_dict(self) -> dict:
        body = PlacementConfig.to_dict(self)
        if self.net_revenue:
            body["net_revenue"] = sorted(self.net_revenue)
        return body

    def to_public_dict(self) -> dict:
        """The HTTP shape: ``"revenue": "net"`` on the networks reporting net revenue (the
        others answer exactly as before this field existed: gross is the default)."""
        body = PlacementConfig.to_dict(self)
        for network in body["networks"]:
            if network["id"] in self.net_revenue:
                network["revenue"] = "net"
        return body

    @classmethod
    def from_dict(cls, placement: str, body: Mapping) -> ServicePlacement:
        """From a PUT body (``revenue`` per network) or a stored dict (``net_revenue``)."""
        if not isinstance(body, Mapping):
            raise InvalidConfig("placement body must be a JSON object")
        net: set[str] = set()
        stored = body.get("net_revenue") or ()
        if isinstance(stored, str) or not isinstance(stored, Sequence):
            raise InvalidConfig("net_revenue must be a list of network ids")
        net.update(map(str, stored))
        raw = body.get("networks")
        networks = raw
        if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
            networks = []
            for i, n in enumerate(raw):
                if isinstance(n, Mapping) and "revenue" in n:
                    kind = n["revenue"]
                    if kind not in REVENUE_KINDS:
                        raise InvalidConfig(f"networks[{i}].revenue must be 'gross' or 'net', got {kind!r}")
                    if kind == "net":
                        net.add(str(n.get("id")))
                    n = {k: v for k, v in n.items() if k != "revenue"}
                networks.append(n)
        core = PlacementConfig.from_dict(placement, {**body, "networks": networks})
        return cls.of(core, net)

    @classmethod
    def of(cls, config: PlacementConfig, net_revenue: frozenset[str] | set[str] | None = None) -> ServicePlacement:
        """``config`` as a :class:`ServicePlacement` (keeping its ``net_revenue`` if it has one)."""
        if net_revenue is None:
            if isinstance(config, ServicePlacement):
                return config
            net_revenue = frozenset()
        return cls(config.id, config.networks, config.segment_by, config.currency, frozenset(net_revenue))
