"""A small Python client of the adbandit HTTP API, with retries and typed results.

    from serving.client import AdbanditClient

    with AdbanditClient("http://127.0.0.1:8000", api_key=None) as api:
        api.put_placement("p1", {"networks": [...], "segment_by": ["country", "os"]})
        d = api.decide("p1", "r1", {"country": "KR", "os": "ios"})        # Decision
        api.post_outcomes([{"event_id": "e1", "decision_id": d.decision_id, ...}])  # OutcomesResult
        api.allocation("p1", segment="KR|ios").networks[0].floor_cpm      # Allocation

Transient failures are retried with exponential back-off (``attempts`` in all, honouring
``Retry-After``): connection errors, timeouts, 429, 502, 503, 504 and 507 (the service's
disk refused a write and nothing was stored). Retrying is safe: outcomes de-duplicate by
``event_id``, and a retried decision is simply another decision. Any other 4xx/5xx raises
:class:`ServiceError` with the status and the service's ``detail``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from bandit.errors import AdbanditError

#: Statuses worth a retry: overload, gateway trouble, not ready, disk refusing writes.
RETRY_STATUSES = frozenset({429, 502, 503, 504, 507})
#: Longest wait between two attempts, whatever ``Retry-After`` says.
MAX_WAIT_S = 30.0


class ServiceError(AdbanditError):
    """The service answered an error (``status``, ``detail``), or stayed unreachable (``status`` 0)."""

    def __init__(self, method: str, path: str, status: int, detail: Any) -> None:
        what = "unreachable" if status == 0 else f"answered {status}"
        super().__init__(f"{method} {path} {what}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Offer:
    """One network called with its floor (a waterfall tier or an auction bidder)."""

    network: str
    floor_cpm: float


def _offers(items: Sequence[Mapping[str, Any]] | None) -> tuple[Offer, ...]:
    return tuple(Offer(str(o["network"]), float(o["floor_cpm"])) for o in items or ())


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision (``POST /v1/decide``): the network to call and its floor; for a waterfall
    or auction placement also ``mode`` and its ``offers`` (tiers in calling order, or bidders),
    of which ``network``/``floor_cpm`` are the first."""

    decision_id: str
    placement: str
    network: str
    floor_cpm: float
    propensity: float
    segment: str
    variant: str
    model_version: str
    mode: str = "single"
    offers: tuple[Offer, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        fields = ("decision_id", "placement", "network", "floor_cpm", "propensity", "segment", "variant")
        return cls(
            *(data[name] for name in fields),
            data["model_version"],
            data.get("mode", "single"),
            _offers(data.get("tiers") or data.get("bidders")),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """One plan of a waterfall or auction allocation: its probability and offers."""

    probability: float
    offers: tuple[Offer, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    error: str


@dataclass(frozen=True, slots=True)
class OutcomesResult:
    """The reply of ``POST /v1/outcomes``."""

    accepted: int
    duplicates: int
    rejected: tuple[Rejected, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutcomesResult:
        rejected = tuple(Rejected(int(r["index"]), str(r["error"])) for r in data.get("rejected") or ())
        return cls(int(data["accepted"]), int(data["duplicates"]), rejected)


@dataclass(frozen=True, slots=True)
class NetworkShare:
    """One network's part of an allocation."""

    network: str
    weight: float
    floor_cpm: float
    floor_p10_cpm: float
    floor_p90_cpm: float
    expected_revenue_cpm: float
    revenue_sd_cpm: float
    fill_rate: float
    auction: str
    auction_confidence: float | None


@dataclass(frozen=True, slots=True)
class Allocation:
    """``GET /v1/placements/{p}/allocation``: weights and floors of one segment and variant."""

    placement: str
    segment: str
    variant: str
    model_version: str
    effective_events: float
    currency: str
    networks: tuple[NetworkShare, ...]
    mode: str = "single"
    plans: tuple[Plan, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Allocation:
        networks = tuple(
            NetworkShare(**{name: n.get(name) for name in NetworkShare.__slots__})  # type: ignore[attr-defined]
            for n in data["networks"]
        )
        return cls(
            data["placement"],
            data["segment"],
            data["variant"],
            data["model_version"],
            float(data["effective_events"]),
            data.get("currency", ""),
            networks,
            data.get("mode", "single"),
            tuple(Plan(float(p["probability"]), _offers(p["offers"])) for p in data.get("plans") or ()),
        )

    def network(self, name: str) -> NetworkShare:
        """The share of network ``name`` (``KeyError`` if the placement has no such network)."""
        for n in self.networks:
            if n.network == name:
                return n
        raise KeyError(name)


class AdbanditClient:
    """The API at ``url`` (e.g. ``http://127.0.0.1:8000``); ``api_key`` is sent as a Bearer
    key. ``http`` may be an ``httpx.Client`` to use (tests pass a mock transport)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        http: httpx.Client | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.base = str(url).rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._own = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout_s)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def __enter__(self) -> AdbanditClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    # ---------------------------------------------------------------- requests
    def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                params: Mapping[str, str] | None = None) -> Any:  # fmt: skip
        """``method path`` with retries (module docstring); the decoded JSON reply."""
        headers = dict(self._auth)
        if json is not None:
            content = orjson.dumps(json, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY)
        if content is not None:
            headers["Content-Type"] = "application/json"
        url = f"{self.base}{path}"
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                response = self._http.request(method, url, content=content, params=params, headers=headers)
            except httpx.TransportError as exc:
                if last:
                    raise ServiceError(method, path, 0, f"{type(exc).__name__}: {exc} ({url})") from None
                wait = delay
            else:
                if response.status_code < 300:
                    return response.json() if response.content else None
                if response.status_code not in RETRY_STATUSES or last:
                    raise ServiceError(method, path, response.status_code, _detail(response))
                wait = _retry_after(response) or delay
            time.sleep(min(wait, MAX_WAIT_S))
            delay *= 2
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- the API
    def health(self) -> dict:
        return self.request("GET", "/healthz")

    def put_placement(self, placement: str, body: Mapping[str, Any]) -> dict:
        return self.request("PUT", f"/v1/placements/{_quote(placement)}", json=body)

    def placement(self, placement: str) -> dict | None:
        """The placement's configuration, or ``None`` if the service has no such placement."""
        try:
            return self.request("GET", f"/v1/placements/{_quote(placement)}")
        except ServiceError as exc:
            if exc.status == 404:
                return None
            raise

    def decide(self, placement: str, request_id: str, context: Mapping[str, Any] | None = None) -> Decision:
        body: dict[str, Any] = {"placement": placement, "request_id": request_id}
        if context is not None:
            body["context"] = dict(context)
        return Decision.from_json(self.request("POST", "/v1/decide", json=body))

    def decide_batch(self, placement: str, requests: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[Decision]:
        """Decisions for ``(request_id, context)`` pairs, in request order."""
        body = {
            "placement": placement,
            "requests": [{"request_id": r, **({"context": dict(c)} if c is not None else {})} for r, c in requests],
        }
        return [Decision.from_json(d) for d in self.request("POST", "/v1/decide/batch", json=body)["decisions"]]

    def post_outcomes(self, events: Sequence[Mapping[str, Any]] | bytes) -> OutcomesResult:
        """Outcome events (dicts, or an already encoded JSON array)."""
        if isinstance(events, bytes):
            return OutcomesResult.from_json(self.request("POST", "/v1/outcomes", content=events))
        return OutcomesResult.from_json(self.request("POST", "/v1/outcomes", json=list(events)))

    def allocation(self, placement: str, segment: str | None = None, variant: str | None = None) -> Allocation:
        params = {k: v for k, v in (("segment", segment), ("variant", variant)) if v is not None}
        return Allocation.from_json(
            self.request("GET", f"/v1/placements/{_quote(placement)}/allocation", params=params)
        )

    def prebid_floors(
        self, placement: str | Sequence[str], *, key: str | None = None, bidders: bool = False
    ) -> dict:
        """Prebid floors of one placement, or of several in one document (``key``:
        ``adUnitCode`` or ``gptSlot``; ``bidders``: per-bidder rules)."""
        params: dict[str, Any] = {"placement": [placement] if isinstance(placement, str) else list(placement)}
        if key is not None:
            params["key"] = key
        if bidders:
            params["bidders"] = "true"
        return self.request("GET", "/v1/prebid/floors", params=params)

    def openrtb_floors(self, bid_request: Mapping[str, Any]) -> dict:
        """An OpenRTB 2.6 BidRequest back with ``imp[].bidfloor``/``bidfloorcur`` set."""
        return self.request("POST", "/v1/openrtb/floors", json=dict(bid_request))

    def set_experiment(self, placement: str, variants: Sequence[Mapping[str, Any]]) -> dict:
        return self.request("PUT", f"/v1/placements/{_quote(placement)}/experiment", json={"variants": list(variants)})

    def experiment_report(self, placement: str) -> dict:
        return self.request("GET", f"/v1/placements/{_quote(placement)}/experiment")


def _quote(placement: str) -> str:
    return quote(placement, safe="")


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(float(response.headers.get("retry-after", "")), 0.0)
    except ValueError:
        return None
