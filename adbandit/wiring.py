"""What ``adbandit serve`` injects into the service (:mod:`serving.sources`).

* the model source: the MLflow model registry (:class:`experiments.model_registry.MlflowModelSource`)
  when MLflow is installed (``adbandit[offline]``), else none (``--model`` is then refused at
  start, and swaps by alias answer 503);
* the demo market: the simulator's :class:`simulator.demo.MarketDemo`.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from serving.commands import Wiring
from serving.sources import DemoSource, ModelSource

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.settings import Settings


def mlflow_source() -> ModelSource | None:
    if find_spec("mlflow") is None:
        return None
    from experiments.model_registry import MlflowModelSource

    return MlflowModelSource()


def market_demo() -> DemoSource:
    from simulator.demo import MarketDemo

    return MarketDemo()


def wiring() -> Wiring:
    return Wiring(model_source=mlflow_source, demo_source=market_demo)


def create_app(settings: Settings | None = None, **kwargs: Any) -> FastAPI:
    """:func:`serving.app.create_app` with the command line's model source and demo market
    (what tests and scripts use to get the app ``adbandit serve`` runs)."""
    from serving.app import create_app as create

    kwargs.setdefault("model_source", mlflow_source())
    kwargs.setdefault("demo_source", market_demo())
    return create(settings, **kwargs)
