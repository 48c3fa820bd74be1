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

A network may name its Prebid bidder code, ``{"id": "appnexus_kr", ..., "bidder":
"appnexus"}`` (absent: no bidder), for per-bidder floors in the Prebid floors document and
OpenRTB replies (:mod:`serving.prebid`, :mod:`serving.openrtb`); stored as a top-level
``"prebid_bidders": {network id: bidder code}``, only when non-empty, like ``net_revenue``.

A placement may also set its own segment limits below the service's
(:class:`serving.limits.PlacementLimits`): ``"limits": {"max_segments": 1000}`` in the
HTTP body and in the stored dict alike (only when set, like ``net_revenue``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bandit import PlacementConfig
from bandit.errors import InvalidConfig
from serving.limits import PlacementLimits

REVENUE_KINDS = ("gross", "net")
#: A placement without limits of its own (the service's apply).
NO_LIMITS = PlacementLimits()


#: A Prebid bidder code: letters, digits, '_', '-', '.' (Prebid's own codes are lower-case words).
BIDDER_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _core(config: PlacementConfig) -> tuple:
    return (
        config.id, config.networks, config.segment_by, config.currency, config.mode, config.max_tiers, config.max_calls,
        config.floor_precision_cpm,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServicePlacement(PlacementConfig):
    """A placement as the service keeps it: ``net_revenue`` holds the ids of the networks
    that report revenue net of their share, ``limits`` its own segment limits."""

    net_revenue: frozenset[str] = frozenset()
    limits: PlacementLimits = NO_LIMITS
    #: (network id, Prebid bidder code) pairs, sorted by network id.
    bidders: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        PlacementConfig.__post_init__(self)  # slots dataclass: no zero-argument super()
        net = frozenset(self.net_revenue)
        unknown = sorted(net - set(self.network_ids))
        if unknown:
            raise InvalidConfig(f"net_revenue names networks {unknown} the placement does not have")
        object.__setattr__(self, "net_revenue", net)
        if not isinstance(self.limits, PlacementLimits):
            raise InvalidConfig("limits must be a PlacementLimits")
        bidders = tuple(sorted(dict(self.bidders).items()))
        unknown = sorted(set(dict(bidders)) - set(self.network_ids))
        if unknown:
            raise InvalidConfig(f"prebid_bidders names networks {unknown} the placement does not have")
        for network, code in bidders:
            if not isinstance(code, str) or not BIDDER_CODE.match(code):
                raise InvalidConfig(
                    f"network {network!r}: bidder must be a Prebid bidder code (1-64 letters, digits, '_', '-', '.'), "
                    f"got {code!r}"
                )
        object.__setattr__(self, "bidders", bidders)

    def __eq__(self, other: object) -> bool:
        # Equal to a plain PlacementConfig with the same fields when no network reports net
        # and it sets no limits of its own.
        if not isinstance(other, PlacementConfig):
            return NotImplemented
        if isinstance(other, ServicePlacement):
            theirs, their_limits, their_bidders = other.net_revenue, other.limits, other.bidders
        else:
            theirs, their_limits, their_bidders = frozenset(), PlacementLimits(), ()
        return (
            _core(self) == _core(other)
            and self.net_revenue == theirs
            and self.limits == their_limits
            and self.bidders == their_bidders
        )

    def __hash__(self) -> int:
        if not self.net_revenue and not self.limits and not self.bidders:
            return hash(_core(self))
        return hash((*_core(self), self.net_revenue, self.limits, self.bidders))

    def bidder_of(self, network: str) -> str | None:
        """The Prebid bidder code of ``network`` (None: not mapped)."""
        return dict(self.bidders).get(network)

    def reports_net(self, network: str) -> bool:
        return network in self.net_revenue

    def to_dict(self) -> dict:
        body = PlacementConfig.to_dict(self)
        if self.net_revenue:
            body["net_revenue"] = sorted(self.net_revenue)
        if self.limits:
            body["limits"] = self.limits.to_dict()
        if self.bidders:
            body["prebid_bidders"] = dict(self.bidders)
        return body

    def to_public_dict(self) -> dict:
        """The HTTP shape: ``"revenue": "net"`` on the networks reporting net revenue (the
        others answer exactly as before this field existed: gross is the default)."""
        body = PlacementConfig.to_dict(self)
        for network in body["networks"]:
            if network["id"] in self.net_revenue:
                network["revenue"] = "net"
            bidder = self.bidder_of(network["id"])
            if bidder is not None:
                network["bidder"] = bidder
        if self.limits:
            body["limits"] = self.limits.to_dict()
        body["floor_precision_cpm"] = self.floor_precision_cpm
        return body

    @classmethod
    def from_dict(cls, placement: str, body: Mapping) -> ServicePlacement:
        """From a PUT body (``revenue`` per network) or a stored dict (``net_revenue``);
        ``limits`` reads the same in both."""
        if not isinstance(body, Mapping):
            raise InvalidConfig("placement body must be a JSON object")
        net: set[str] = set()
        stored = body.get("net_revenue") or ()
        if isinstance(stored, str) or not isinstance(stored, Sequence):
            raise InvalidConfig("net_revenue must be a list of network ids")
        net.update(map(str, stored))
        bidders = body.get("prebid_bidders") or {}
        if not isinstance(bidders, Mapping):
            raise InvalidConfig("prebid_bidders must be an object of network id -> Prebid bidder code")
        bidders = {str(k): v for k, v in bidders.items()}
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
                if isinstance(n, Mapping) and "bidder" in n:
                    if n["bidder"] is not None:
                        bidders[str(n.get("id"))] = n["bidder"]
                    n = {k: v for k, v in n.items() if k != "bidder"}
                networks.append(n)
        core = PlacementConfig.from_dict(placement, {**body, "networks": networks})
        return cls.of(core, net, PlacementLimits.from_dict(body.get("limits")), bidders)

    @classmethod
    def of(
        cls,
        config: PlacementConfig,
        net_revenue: frozenset[str] | set[str] | None = None,
        limits: PlacementLimits | None = None,
        bidders: Mapping[str, str] | None = None,
    ) -> ServicePlacement:
        """``config`` as a :class:`ServicePlacement` (keeping its ``net_revenue``, ``limits``
        and ``bidders`` where not given)."""
        if isinstance(config, ServicePlacement):
            if net_revenue is None and limits is None and bidders is None:
                return config
            net_revenue = config.net_revenue if net_revenue is None else net_revenue
            limits = config.limits if limits is None else limits
            bidders = dict(config.bidders) if bidders is None else bidders
        return cls(
            config.id,
            config.networks,
            config.segment_by,
            config.currency,
            mode=config.mode,
            max_tiers=config.max_tiers,
            max_calls=config.max_calls,
            floor_precision_cpm=config.floor_precision_cpm,
            net_revenue=frozenset(net_revenue or ()),
            limits=limits or PlacementLimits(),
            bidders=tuple((bidders or {}).items()),
        )
