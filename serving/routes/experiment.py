"""``/v1/placements/{placement}/experiment``: the variants of a placement's online A/B test."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from serving.auth import WriteAuth
from serving.routes.deps import BODY_ERRORS, JSON, OrjsonRoute, PlacementPath, SettingsDep, StoreDep, errors
from serving.schemas import ExperimentIn, ExperimentOut, ExperimentReport
from serving.variants import ExperimentConfig, VariantConfig

router = APIRouter(prefix="/v1/placements", tags=["experiment"], route_class=OrjsonRoute)

_NOT_FOUND = errors(404, 422)


@router.get("/{placement}/experiment", response_model=ExperimentReport, responses=_NOT_FOUND)
async def get_experiment(placement: str, store: StoreDep) -> Response:
    """Per variant: traffic, policy, requests and revenue per request (CPM) since the
    experiment started, with its lift over the champion and the lift's 95% confidence interval."""
    report = await run_in_threadpool(store.experiment_report, placement)
    return JSON(report)


@router.put(
    "/{placement}/experiment",
    response_model=ExperimentOut,
    dependencies=[WriteAuth],
    responses=errors(401, 404, 507, *BODY_ERRORS),
)
async def put_experiment(placement: PlacementPath, body: ExperimentIn, store: StoreDep, settings: SettingsDep) -> dict:
    """Set the variants: names, traffic percent (summing to 100), policy and parameters.
    A variant that keeps its policy and parameters keeps what it learned."""
    experiment = ExperimentConfig(
        tuple(VariantConfig(v.name, v.traffic, v.policy or settings.default_policy, v.params) for v in body.variants)
    )
    await run_in_threadpool(store.set_experiment, placement, experiment)
    return {"placement": placement, **store.get_experiment(placement).to_dict()}
