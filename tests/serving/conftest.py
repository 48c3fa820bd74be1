"""Fixtures for the HTTP tests: an app over a fresh state dir, a client, a placement.

Every test gets its own state dir and its own :class:`PolicyStore` (opened and closed
by the app's lifespan). fsync is off here (the durability of acknowledged events is
tested against the real process in ``test_crash.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from adbandit.wiring import create_app
from serving.settings import Settings

#: The placement of the design doc's examples: two networks, segments by country and OS.
P1_BODY = {
    "networks": [
        {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 50.0, "min_share": 0.0, "max_share": 1.0},
        {"id": "beta", "floor_min_cpm": 0.5, "floor_max_cpm": 20.0, "min_share": 0.1, "max_share": 1.0},
    ],
    "segment_by": ["country", "os"],
    "currency": "USD",
}


def test_settings(state_dir, **overrides) -> Settings:
    """Settings for an in-process app: no API key (whatever the environment says), no fsync."""
    values = {"state_dir": state_dir, "api_key": None, "fsync": False, "snapshot_every_s": 3600.0}
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # a helper, not a test


@pytest.fixture
def make_client(tmp_path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)`` → a started TestClient (lifespan run); all closed at teardown.
    ``model_source=`` replaces the MLflow registry (a :class:`serving.sources.ModelSource`)."""
    with _clients(tmp_path) as make:
        yield make


@contextmanager
def _clients(tmp_path):
    opened: list[TestClient] = []

    def make(state_dir=None, model_source=None, **overrides) -> TestClient:
        wired = {"model_source": model_source} if model_source is not None else {}
        client = TestClient(create_app(test_settings(state_dir or tmp_path / "state", **overrides), **wired))
        client.__enter__()
        opened.append(client)
        return client

    try:
        yield make
    finally:
        for client in reversed(opened):
            client.__exit__(None, None, None)


class FakeModelSource:
    """A :class:`serving.sources.ModelSource` whose ``load`` is ``loader(alias, name)``; records its calls."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.calls: list[tuple[str, str]] = []

    def load(self, alias: str, name: str):
        self.calls.append((alias, name))
        return self.loader(alias, name)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def p1(client) -> TestClient:
    """A client whose service has placement ``p1`` (:data:`P1_BODY`)."""
    response = client.put("/v1/placements/p1", json=P1_BODY)
    assert response.status_code == 201, response.text
    return client


def outcome(i: int, *, placement: str = "p1", network: str = "alpha", filled: bool = True, revenue: float = 2.0,
            floor: float = 1.0, ts: object = "2026-11-21T10:00:00Z", decision_id: str | None = None,
            context: dict | None = None, prefix: str = "e") -> dict:  # fmt: skip
    """One valid outcome event in the HTTP contract's shape."""
    event = {
        "event_id": f"{prefix}{i}",
        "ts": ts,
        "placement": placement,
        "network": network,
        "floor_cpm": floor,
        "filled": filled,
        "revenue_cpm": revenue if filled else 0.0,
        "context": context if context is not None else {"country": "KR", "os": "ios"},
    }
    if decision_id is not None:
        event["decision_id"] = decision_id
    return event

