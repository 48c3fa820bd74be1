"""Offline simulator: a seller-side ad market with exact ground truth, and a runner that
drives any :mod:`bandit` policy through it (Ray fan-out in :mod:`simulator.parallel`)."""

from simulator.market import CapLedger, Market, OracleResult, Outcome, RequestBatch
from simulator.oracle import OracleAllocation
from simulator.runner import (
    BatchRecord,
    RequestStream,
    build_policy,
    capture,
    run,
    run_seeds,
    summarize,
)
from simulator.scenario import (
    EventSpec,
    NetworkSpec,
    Scenario,
    Seasonality,
    SegmentSpec,
    list_scenarios,
    load_scenario,
)

__all__ = [
    "BatchRecord",
    "CapLedger",
    "EventSpec",
    "Market",
    "NetworkSpec",
    "OracleAllocation",
    "OracleResult",
    "Outcome",
    "RequestBatch",
    "RequestStream",
    "Scenario",
    "Seasonality",
    "SegmentSpec",
    "build_policy",
    "capture",
    "list_scenarios",
    "load_scenario",
    "run",
    "run_seeds",
    "summarize",
]
