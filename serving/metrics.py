"""Prometheus metrics, one registry per app (logs: :mod:`serving.logs`).

Request counts and latency per endpoint come from :class:`MetricsMiddleware` (a plain
ASGI middleware: a few µs per request). Outcome counts are recorded by the outcomes
route. Figures the store owns (event-log lag, requests and revenue per placement and
variant, …) are read from :meth:`PolicyStore.metrics` at scrape time by
:class:`StoreCollector`, and each placement's weights and floors per network by
:class:`AllocationCollector`, so they cost nothing between scrapes. Names follow
Prometheus conventions: counters end in ``_total``, units are in the name (``_seconds``,
``_cpm``, ``_bytes``); docs/service.md lists them and ``docs/grafana/adbandit.json`` is a
dashboard built on them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

log = logging.getLogger("adbandit.serving")
access_log = logging.getLogger("adbandit.serving.access")


class ServiceMetrics:
    """The app's metric objects, in their own :class:`CollectorRegistry` (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "adbandit_http_requests",
            "HTTP requests by endpoint and status.",
            ("method", "endpoint", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "adbandit_http_request_duration_seconds",
            "HTTP request latency by endpoint.",
            ("method", "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "adbandit_outcome_events",
            "Outcome events received, by result (accepted, duplicate, rejected).",
            ("result",),
            registry=self.registry,
        )
        self.decisions = Counter(
            "adbandit_decisions", "Decisions served, by placement.", ("placement",), registry=self.registry
        )
        for result in ("accepted", "duplicate", "rejected"):
            self.events.labels(result)

    def record_ingest(self, accepted: int, duplicates: int, rejected: int) -> None:
        self.events.labels("accepted").inc(accepted)
        self.events.labels("duplicate").inc(duplicates)
        self.events.labels("rejected").inc(rejected)

    def watch(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """Export the figures of ``source()`` (e.g. ``store.metrics``) at scrape time."""
        self.registry.register(StoreCollector(source))

    def watch_allocations(self, source: Callable[[], list[AllocationRow]]) -> None:
        """Export per-network weights and floors from ``source()`` at scrape time (:class:`AllocationCollector`)."""
        self.registry.register(AllocationCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


#: Per placement and per variant figures of the store: key -> (metric suffix, is a counter, help).
#: Counters only grow while the process runs (they restart from the snapshot's sums), so
#: ``rate(revenue_cpm_total) / rate(requests_total)`` is revenue per request over a window.
FIGURES: dict[str, tuple[str, bool, str]] = {
    "requests": ("requests", True, "Outcome events (requests with a known outcome) learned"),
    "revenue": ("revenue_cpm", True, "Sum of revenue per request of the learned outcome events, CPM"),
    "revenue_per_request": ("revenue_per_request_cpm", False, "Mean revenue per request since the start, CPM"),
    "decisions": ("decisions", True, "Decisions served"),
    "segments": ("segments", False, "Segments admitted (each learns its own allocation)"),
    "segments_limit": ("segments_limit", False, "Most segments the placement may admit"),
}


class StoreCollector(Collector):
    """The figures of :meth:`PolicyStore.metrics`, read at scrape time.

    Top-level numbers become ``adbandit_store_<name>`` (counters when the name ends in
    ``_total``); per placement ``adbandit_placement_<figure>{placement}`` and per variant
    ``adbandit_variant_<figure>{placement,variant}`` as :data:`FIGURES` names them (counters
    end in ``_total``), plus ``adbandit_variant_info{placement,variant,model_version} 1``;
    ``segments_over_limit`` becomes ``adbandit_segments_over_limit_total{placement,limit,path}``.
    """

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def describe(self) -> list:
        return []  # names depend on the store's figures; skip the registry's duplicate check

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            figures = dict(self._source())
        except Exception:
            log.debug("store metrics unavailable", exc_info=True)
            return
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

        def add(name: str, labels: list[str], values: list[str], value: Any, counter: bool, text: str) -> None:
            number = _number(value)
            if number is None:
                return
            if name not in families:
                kind = CounterMetricFamily if counter else GaugeMetricFamily
                families[name] = kind(name, text, labels=labels)
            families[name].add_metric(values, number)

        def add_figure(scope: str, key: str, labels: list[str], values: list[str], value: Any) -> None:
            suffix, counter, text = FIGURES.get(key, (_figure(key), False, f"PolicyStore figure {key}"))
            name = f"adbandit_{scope}_{suffix}" + ("_total" if counter else "")
            add(name, labels, values, value, counter, f"{text}, per {' and '.join(labels)}.")

        for key, value in figures.items():
            if key not in ("placements", "segments_over_limit"):
                name = f"adbandit_store_{_clean(key)}"
                add(name, [], [], value, name.endswith("_total"), f"PolicyStore figure {key}.")
        over_limit = CounterMetricFamily(
            "adbandit_segments_over_limit",
            "Segments served (path=decide) or learned (path=outcome) at their nearest pooled level because a "
            "limit (segments per placement, or values per segment field) was reached.",
            labels=["placement", "limit", "path"],
        )
        for placement, limit, path, n in figures.get("segments_over_limit") or ():
            over_limit.add_metric([str(placement), str(limit), str(path)], n)
        info = GaugeMetricFamily(
            "adbandit_variant_info",
            "1 per live variant, labelled with the model version it serves.",
            labels=["placement", "variant", "model_version"],
        )
        for placement, row in (figures.get("placements") or {}).items():
            for key, value in row.items():
                if key != "variants":
                    add_figure("placement", key, ["placement"], [str(placement)], value)
            for variant, vrow in (row.get("variants") or {}).items():
                for key, value in vrow.items():
                    if key == "model_version":
                        info.add_metric([str(placement), str(variant), str(value)], 1.0)
                    else:
                        add_figure("variant", key, ["placement", "variant"], [str(placement), str(variant)], value)
        yield from families.values()
        yield over_limit
        yield info


#: One row per (placement, network) of each placement's champion allocation over all its traffic.
AllocationRow = tuple[str, str, Mapping[str, float]]

#: Per-network figures of the champion's whole-placement allocation: field -> (metric, help).
ALLOCATION_GAUGES: dict[str, tuple[str, str]] = {
    "weight": ("adbandit_allocation_weight", "Exposure weight (share of traffic) of the network"),
    "floor_cpm": ("adbandit_allocation_floor_cpm", "Floor price given to the network, CPM"),
    "expected_revenue_cpm": (
        "adbandit_allocation_expected_revenue_cpm",
        "Posterior expected revenue per request at that floor, CPM",
    ),
    "fill_rate": ("adbandit_allocation_fill_rate", "Expected fill rate at that floor"),
}


class AllocationCollector(Collector):
    """Per placement and network: the champion's current weight, floor, expected revenue and
    fill rate over the whole placement (segment ``*``), read at scrape time.

    Cardinality: one series per gauge and (placement, network) — at most the number of
    placements times ``ADBANDIT_MAX_NETWORKS`` (64) each. Segments and variants are never labels
    (a placement may have 50,000 segments): per-segment allocations are read over HTTP.
    """

    def __init__(self, source: Callable[[], list[AllocationRow]]) -> None:
        self._source = source

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows = self._source()
        except Exception:
            log.debug("allocation metrics unavailable", exc_info=True)
            return
        families = {
            field: GaugeMetricFamily(
                name, f"{text}, per placement and network (champion, all segments).", labels=["placement", "network"]
            )
            for field, (name, text) in ALLOCATION_GAUGES.items()
        }
        for placement, network, values in rows:
            for field, family in families.items():
                number = _number(values.get(field))
                if number is not None:
                    family.add_metric([placement, network], number)
        yield from families.values()


def _clean(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(key)).strip("_").lower()


def _figure(key: str) -> str:
    name = _clean(key)
    return f"{name}_cpm" if name.startswith("revenue") else name


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (``/v1/placements/{placement}``)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            self.metrics.latency.labels(method, endpoint).observe(elapsed)
            if access_log.isEnabledFor(logging.DEBUG) or (status >= 400 and access_log.isEnabledFor(logging.INFO)):
                access_log.log(
                    logging.INFO if status >= 400 else logging.DEBUG,
                    "request",
                    extra={
                        "fields": {
                            "method": method,
                            "path": scope.get("path"),
                            "status": status,
                            "ms": round(elapsed * 1e3, 3),
                        }
                    },
                )
