"""``/v1/placements/{placement}/experiment``: the variants of a placement's online A/B test."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from bandit import POLICIES
from bandit.params import check_params
from serving.auth import ReadAuth, WriteAuth
from serving.routes.deps import BODY_ERRORS, JSON, OrjsonRoute, PlacementPath, SettingsDep, StoreDep, errors
from serving.schemas import ExperimentIn, ExperimentOut, ExperimentReport
from serving.variants import ExperimentConfig, VariantConfig

router = APIRouter(prefix="/v1/placements", tags=["experiment"], route_class=OrjsonRoute)


@router.get(
    "/{placement}/experiment", response_model=ExperimentReport, dependencies=[ReadAuth], responses=errors(401, 404, 422)
)
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
    A variant that keeps its policy and parameters keeps what it learned. ``params`` are
    checked against the policy's table of ranges (:data:`bandit.params.POLICY_PARAMS`)."""
    variants = []
    for v in body.variants:
        policy = v.policy or settings.default_policy
        if policy in POLICIES:  # an unknown policy is named by VariantConfig
            check_params(policy, v.params, where=f"variant {v.name!r}: {policy} ")
        variants.append(VariantConfig(v.name, v.traffic, policy, v.params))
    experiment = ExperimentConfig(tuple(variants))
    await run_in_threadpool(store.set_experiment, placement, experiment)
    return {"placement": placement, **store.get_experiment(placement).to_dict()}
