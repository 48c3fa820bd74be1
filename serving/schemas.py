"""HTTP request and response bodies (pydantic), kept apart from the domain types in :mod:`bandit`.

Input models forbid unknown fields (a typo is a 422 naming it) and non-finite numbers;
the domain constructors (:class:`bandit.PlacementConfig`, :class:`bandit.OutcomeEvent`)
then apply the cross-field rules. Response models document the shapes in OpenAPI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import TypedDict

from bandit import MAX_CPM
from serving.limits import (
    SCHEMA_MAX_CONTEXT_FIELDS,
    SCHEMA_MAX_CONTEXT_KEY,
    SCHEMA_MAX_CONTEXT_VALUE,
    SCHEMA_MAX_NETWORKS,
    SCHEMA_MAX_SEGMENT_FIELDS,
)
from serving.settings import MAX_DECIDE_BATCH

Cpm = Annotated[float, Field(ge=0.0, le=MAX_CPM, description="Price in CPM (currency per 1000 impressions).")]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ContextValue = Annotated[str, StringConstraints(max_length=SCHEMA_MAX_CONTEXT_VALUE)] | int | float | bool | None
Context = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=SCHEMA_MAX_CONTEXT_KEY)], ContextValue],
    Field(max_length=SCHEMA_MAX_CONTEXT_FIELDS, description="Request context, e.g. {'country': 'KR', 'os': 'ios'}."),
]


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. ['body', 'networks', 0, 'floor_min_cpm'].")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: a message, or (request validation) the list of issues naming each field."""

    detail: str | list[ValidationIssue]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Out(BaseModel):
    model_config = ConfigDict(allow_inf_nan=True)


# ---------------------------------------------------------------------------- placements
class NetworkIn(_In):
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    floor_min_cpm: Cpm = 0.0
    floor_max_cpm: Cpm = 50.0
    min_share: Share = Field(
        0.0,
        description="Least share of traffic: of decisions (single), of first-tier calls (waterfall) or of "
        "requests calling the network (auction).",
    )
    max_share: Share = Field(
        1.0,
        description="Largest share of traffic, in the same sense as min_share.",
    )
    auction: Literal["auto", "first", "second"] = "auto"
    revenue: Literal["gross", "net"] = Field(
        "gross",
        description="How the network reports revenue_cpm: 'gross' (what the buyer paid; a fill below the floor "
        "is rejected) or 'net' (after the network's share; may be below the floor).",
    )
    bidder: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        None,
        description="Prebid bidder code of this network (e.g. 'appnexus'), for per-bidder floors in "
        "GET /v1/prebid/floors?bidders=true and POST /v1/openrtb/floors; absent: none.",
    )


class PlacementLimitsIn(_In):
    """A placement's own segment limits, at most the service's (``ADBANDIT_MAX_SEGMENTS``,
    ``ADBANDIT_MAX_FIELD_VALUES``); absent: the service's."""

    max_segments: int | None = Field(
        None, ge=1, description="Most segments; a new one beyond it is served and learned at the nearest pooled level."
    )
    max_field_values: int | None = Field(
        None, ge=1, description="Most distinct values per segment field; a new value beyond it reads '*'."
    )


class PlacementIn(_In):
    """Body of ``PUT /v1/placements/{placement}``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "networks": [
                        {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 50.0, "min_share": 0.0, "max_share": 1.0}
                    ],
                    "segment_by": ["country", "os"],
                    "currency": "USD",
                }
            ]
        }
    )

    networks: Annotated[list[NetworkIn], Field(min_length=1, max_length=SCHEMA_MAX_NETWORKS)]
    segment_by: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
        Field(max_length=SCHEMA_MAX_SEGMENT_FIELDS),
    ] = []
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")] = "USD"
    limits: PlacementLimitsIn | None = Field(
        None, description="Segment limits of this placement below the service's (ADBANDIT_MAX_SEGMENTS, ...)."
    )
    mode: Literal["single", "waterfall", "auction"] = Field(
        "single",
        description="How a request calls networks: 'single' (one network and floor per request), 'waterfall' "
        "(tiers in order, each with a floor, until one fills) or 'auction' (networks called at once with a floor "
        "each; the highest bid wins).",
    )
    max_tiers: int = Field(0, ge=0, description="Waterfall: most tiers per request (0: every network).")
    max_calls: int = Field(0, ge=0, description="Auction: most networks called per request (0: every network).")
    floor_precision_cpm: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Served floors are multiples of this (CPM): 1/n for a whole n up to 10000 (0.01: cents, the "
        "default), or 0 for unrounded floors. Floors are rounded before a decision's propensities are computed.",
    )


class NetworkOut(_Out):
    id: str
    floor_min_cpm: float
    floor_max_cpm: float
    min_share: float
    max_share: float
    auction: str
    revenue: Literal["net"] | None = Field(
        None, description="'net' when the network reports net revenue; absent: gross."
    )
    bidder: str | None = Field(None, description="Prebid bidder code, when set.")


class PlacementLimitsOut(_Out):
    max_segments: int | None = None
    max_field_values: int | None = None


class PlacementOut(_Out):
    placement: str
    networks: list[NetworkOut]
    segment_by: list[str]
    currency: str
    limits: PlacementLimitsOut | None = Field(None, description="The placement's own segment limits, when set.")
    mode: str | None = Field(None, description="'waterfall' or 'auction' for multi-network placements; absent: single.")
    max_tiers: int | None = None
    max_calls: int | None = None
    floor_precision_cpm: float = Field(0.01, description="Served floors are multiples of this (CPM; 0: not rounded).")


class PlacementList(_Out):
    placements: list[PlacementOut]


# ------------------------------------------------------------------------------ decide
class DecideRequest(_In):
    """Body of ``POST /v1/decide``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"placement": "p1", "request_id": "r1", "context": {"country": "KR", "os": "ios"}}]
        }
    )

    placement: Id
    request_id: Id
    context: Context = {}
    user_id: Id | None = Field(None, description="Sticky variant assignment key (else request_id).")


class OfferOut(_Out):
    """One network called by a waterfall or auction decision, with its floor."""

    network: str
    floor_cpm: float


class DecisionOut(_Out):
    decision_id: str
    placement: str
    network: str = Field(description="The network to call (a waterfall's first tier; an auction's first bidder).")
    floor_cpm: float
    propensity: float = Field(
        description="P(network) under the allocation that made the decision; for a waterfall or auction, the "
        "probability of the whole plan (networks, order and floors)."
    )
    segment: str
    variant: str
    model_version: str
    mode: Literal["waterfall", "auction"] | None = Field(
        None, description="Waterfall and auction placements only; absent for a single-network decision."
    )
    tiers: list[OfferOut] | None = Field(
        None, description="Waterfall: the tiers to try in order until one fills, each a network and its floor."
    )
    bidders: list[OfferOut] | None = Field(
        None, description="Auction: the networks to call at once, each with its floor; the highest bid wins."
    )


class DecideBatchItem(TypedDict):
    """One request of a batch (a TypedDict: validated without building a model per item)."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[misc]

    request_id: Id
    context: NotRequired[Context]


class DecideBatchRequest(_In):
    """Body of ``POST /v1/decide/batch``: decisions come back in request order."""

    placement: Id
    requests: Annotated[list[DecideBatchItem], Field(max_length=MAX_DECIDE_BATCH)]


class DecideBatchResponse(_Out):
    decisions: list[DecisionOut]


# ----------------------------------------------------------------------------- outcomes
class OutcomeEventIn(_In):
    """One outcome event (``POST /v1/outcomes`` takes a JSON array or NDJSON of these)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "e1",
                    "decision_id": "d1",
                    "ts": "2026-11-21T10:00:00Z",
                    "placement": "p1",
                    "network": "alpha",
                    "floor_cpm": 1.37,
                    "filled": True,
                    "revenue_cpm": 2.05,
                    "context": {"country": "KR", "os": "ios"},
                }
            ]
        }
    )

    event_id: Id
    decision_id: Id | None = None
    ts: str | float = Field(description="ISO 8601 time (e.g. 2026-11-21T10:00:00Z) or epoch seconds.")
    placement: Id
    network: Id
    floor_cpm: Cpm
    filled: bool
    revenue_cpm: Cpm = Field(0.0, description="Price paid in CPM; 0 when not filled.")
    context: Context = {}


class ResponseIn(_In):
    """What one network called by a waterfall or auction decision answered."""

    network: Id
    floor_cpm: Cpm = Field(description="The floor the network was given (the decision's).")
    status: Literal["bid", "no_bid", "below_floor", "timeout"] = Field(
        description="'bid': it bid (or filled) at price_cpm >= floor_cpm; the others fill nothing."
    )
    price_cpm: Cpm | None = Field(None, description="Price bid or paid (CPM); required with status 'bid' only.")
    won: bool = Field(False, description="True for the response that won the impression (at most one).")


class MultiOutcomeEventIn(_In):
    """The outcome of one waterfall or auction decision: one response per called network,
    expanded by the service into per-network outcome events ``"<event_id>/<network>"``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "e7",
                    "decision_id": "d7",
                    "ts": "2026-11-21T10:00:00Z",
                    "placement": "wf",
                    "context": {"country": "KR", "os": "ios"},
                    "responses": [
                        {"network": "alpha", "floor_cpm": 3.1, "status": "no_bid"},
                        {"network": "beta", "floor_cpm": 1.2, "status": "bid", "price_cpm": 1.5, "won": True},
                    ],
                }
            ]
        }
    )

    event_id: Id
    decision_id: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        None, description="The decision's id (a plan's id grows with its offers: 36 + 8 per offer characters)."
    )
    ts: str | float = Field(description="ISO 8601 time (e.g. 2026-11-21T10:00:00Z) or epoch seconds.")
    placement: Id
    context: Context = {}
    responses: Annotated[list[ResponseIn], Field(min_length=1, max_length=SCHEMA_MAX_NETWORKS)]


class RejectedEvent(_Out):
    index: int = Field(description="0-based position in the array (or non-blank NDJSON line).")
    error: str


class IngestResponse(_Out):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


# --------------------------------------------------------------------------- allocation
class NetworkAllocationOut(_Out):
    network: str
    weight: float = Field(description="Share of the segment's traffic sent to this network.")
    floor_cpm: float = Field(description="Central floor (CPM) this network gets.")
    floor_p10_cpm: float
    floor_p90_cpm: float
    expected_revenue_cpm: float = Field(description="Expected revenue per request (CPM) at that floor.")
    revenue_sd_cpm: float = Field(description="Posterior standard deviation of that expectation.")
    fill_rate: float
    auction: str
    auction_confidence: float | None = Field(
        default=None,
        description="Probability that the auction type is right (1 when configured; below 0.5 while second price "
        "is used until the evidence for first price is strong).",
    )


class PlanOut(_Out):
    """One plan of a waterfall or auction placement: the networks it calls with their floors."""

    probability: float = Field(description="Share of decisions drawing this plan (Thompson sampling).")
    offers: list[OfferOut] = Field(description="Waterfall: tiers in calling order; auction: the bidders called.")


class AllocationOut(_Out):
    placement: str
    segment: str
    variant: str
    currency: str
    model_version: str
    effective_events: float = Field(description="(Discounted) number of outcome events behind it.")
    networks: list[NetworkAllocationOut]
    mode: Literal["waterfall", "auction"] | None = Field(
        None, description="Waterfall and auction placements only; absent for a single-network placement."
    )
    plans: list[PlanOut] | None = Field(
        None,
        description="Waterfall and auction placements only: the most probable plans (at most 10), most probable "
        "first. A network's weight is then its share of first-tier calls (waterfall) or its normalised call "
        "probability (auction).",
    )


# ------------------------------------------------------------------------------- history
class HistoryNetworkOut(_Out):
    weight: float | None = Field(description="Exposure weight (share of the placement's requests).")
    floor_cpm: float | None


class HistoryLiftOut(_Out):
    requests: int = Field(description="The variant's outcome events since the experiment began.")
    lift: float | None = Field(description="Revenue per request vs the champion's, minus 1 (null until defined).")
    ci_low: float | None = Field(description="95% CI of the lift (Fieller).")
    ci_high: float | None
    p_value_always_valid: float | None = Field(description="Always-valid (mixture SPRT) p-value at time t.")


class HistoryPointOut(_Out):
    t: float = Field(description="Server time of the point (seconds since the epoch); its window began at the last.")
    requests: int = Field(description="Outcome events learned in the window (all variants).")
    fills: int
    revenue: float = Field(description="Sum of revenue per request (CPM) in the window.")
    revenue_per_request: float | None = Field(description="revenue / requests (CPM); null for an empty window.")
    fill_rate: float | None
    networks: dict[str, HistoryNetworkOut] = Field(description="The champion's allocation at time t.")
    experiment: dict[str, HistoryLiftOut] | None = Field(
        None,
        description="Placement series ('*') only, while an experiment runs: per variant other than the champion, "
        "the experiment report at time t (cumulative since the experiment began). Absent otherwise.",
    )


class ChangeAlarmOut(_Out):
    t: float = Field(description="Server time of the history point that took the alarm.")
    ts: float = Field(description="Newest event time of the batch that showed the change.")
    segment: str
    network: str
    relative: float = Field(description="The batch's relative gap from history (-0.4: 40% below).")


class DataHealthOut(_Out):
    log_lag_events: int = Field(description="Events written to the log and not learned yet.")
    events_accepted_total: int = Field(description="Since the process started.")
    events_rejected_total: int
    events_duplicate_total: int
    last_accepted_at: float | None = Field(description="Server time events were last accepted (epoch seconds).")
    now: float = Field(description="The server's clock.")


class HistoryOut(_Out):
    placement: str
    segment: str
    every_s: float | None = Field(description="Seconds between points (null: the service keeps no history).")
    segments: list[str] = Field(description="Segments with a history: '*' (the placement) and the first seen.")
    champion: str
    networks: list[str]
    points: list[HistoryPointOut]
    alarms: list[ChangeAlarmOut] = Field(description="Change alarms of the placement (all segments), oldest first.")
    last_event_ts: float | None = Field(description="Newest event time learned for the placement (epoch seconds).")
    health: DataHealthOut


# --------------------------------------------------------------------------- experiments
class VariantIn(_In):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    traffic: Annotated[float, Field(ge=0.0, le=100.0, description="Percent of the placement's traffic.")]
    policy: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="Policy name (default: the service's default policy, ts_gmm)."
    )
    params: dict[str, Any] = Field({}, description="Policy parameters, e.g. {'half_life_hours': 24}.")


class ExperimentIn(_In):
    """Body of ``PUT /v1/placements/{placement}/experiment``; traffic must sum to 100."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "variants": [
                        {"name": "champion", "traffic": 90, "policy": "ts_gmm"},
                        {"name": "holdout", "traffic": 10, "policy": "static"},
                    ]
                }
            ]
        }
    )

    variants: Annotated[list[VariantIn], Field(min_length=1, max_length=16)]


class VariantOut(_Out):
    name: str
    traffic: float
    policy: str
    params: dict[str, Any]


class ExperimentOut(_Out):
    placement: str
    variants: list[VariantOut]


class VariantReport(_Out):
    policy: str
    traffic: float
    model_version: str
    decisions: int = Field(description="Decisions served by this process since it started or the variant changed.")
    requests: int = Field(description="Outcome events learned by the variant.")
    revenue_per_request: float | None = Field(description="Mean revenue per request (CPM).")
    lift: float | None = Field(description="Relative lift of revenue per request over the champion.")
    ci_low: float | None = Field(description="Lower end of the lift's 95% confidence interval.")
    ci_high: float | None = Field(description="Upper end of the lift's 95% confidence interval.")
    p_value: float | None = Field(description="Fixed-horizon p-value of the lift (Welch's t-test).")
    p_value_always_valid: float | None = Field(
        None,
        description="Always-valid p-value (mixture SPRT, bandit.abstats.msprt_p_value): valid however often it is "
        "looked at; stop the experiment the first time it is below 0.05.",
    )


class ExperimentReport(_Out):
    placement: str
    champion: str
    variants: dict[str, VariantReport]


# -------------------------------------------------------------------------------- admin
class ModelSwapIn(_In):
    """Replace a variant's live model: from an MLflow alias, or from a base64 ``.npz`` policy state."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"variant": "champion", "mlflow_alias": "champion"}]})

    variant: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "champion"
    mlflow_alias: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    model_name: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    state_npz_b64: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None, description="A policy state saved with bandit.save_state, base64-encoded."
    )


class ModelSwapOut(_Out):
    placement: str
    variant: str
    model_version: str


class SnapshotOut(_Out):
    snapshot: Literal["written"] = "written"
    seconds: float


class HealthOut(_Out):
    status: Literal["ok", "degraded"] = Field(
        "ok",
        description="'degraded': recovery found damaged data (see damage) that no operator has "
        "acknowledged yet (POST /v1/admin/acknowledge-damage); the service still answers.",
    )
    placements: int
    uptime_s: float
    damage: list[str] = Field(default_factory=list, description="One line per unacknowledged damage.")


class DamageOut(_Out):
    """One entry of the quarantine ledger (see docs/service.md, "Damage and the quarantine")."""

    id: str
    kind: Literal["torn", "stray", "damaged", "missing", "snapshot"]
    file: str
    offset: int
    bytes: int
    first_lost_lsn: int | None
    last_lost_lsn: int | None
    records_lost: int | None
    events_lost: int | None
    covered_lsn: int
    detail: str
    quarantined: str | None
    detected: float
    acknowledged: float | None
    message: str


class DamageListOut(_Out):
    damage: list[DamageOut]


class AcknowledgeOut(_Out):
    acknowledged: int = Field(description="Entries acknowledged by this call.")
    damage: list[DamageOut]


# ------------------------------------------------------------------------------- prebid
class PrebidSchema(_Out):
    fields: list[str]
    delimiter: str = "|"


class PrebidModelGroup(_Out):
    model_config = ConfigDict(populate_by_name=True)

    modelWeight: int = Field(description="Percent of auctions using this model group (the variant's traffic).")
    modelVersion: str
    currency: str
    schema_: PrebidSchema = Field(alias="schema")
    values: dict[str, float]
    default: float


class PrebidFloors(_Out):
    """Prebid.js Price Floors Module data (``floorsSchemaVersion`` 2)."""

    floorsSchemaVersion: Literal[2] = 2
    floorProvider: str
    currency: str
    modelTimestamp: int
    skipRate: int = 0
    floorMin: float
    modelGroups: list[PrebidModelGroup]
