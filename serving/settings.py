"""Service settings, from ``ADBANDIT_*`` environment variables (and the ``serve`` flags).

Nothing is built at import time: :func:`get_settings` reads the environment once and is
cached; tests pass their own :class:`Settings` to :func:`serving.app.create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.limits import (
    SCHEMA_MAX_CONTEXT_FIELDS,
    SCHEMA_MAX_CONTEXT_VALUE,
    SCHEMA_MAX_NETWORKS,
    SCHEMA_MAX_SEGMENT_FIELDS,
    Limits,
)

#: Most decisions one ``POST /v1/decide/batch`` call may ask for.
MAX_DECIDE_BATCH = 10_000


class Settings(BaseSettings):
    """Everything the live service needs to start. Env prefix ``ADBANDIT_``."""

    model_config = SettingsConfigDict(env_prefix="ADBANDIT_", extra="ignore")

    state_dir: Path = Field(Path("./state"), description="Where the event log and snapshots live.")
    api_key: SecretStr | None = Field(
        None,
        description="When set (env ADBANDIT_API_KEY), write endpoints need 'Authorization: Bearer <key>'; "
        "this key is accepted on every endpoint.",
    )
    read_api_key: SecretStr | None = Field(
        None,
        description="When set (env ADBANDIT_READ_API_KEY), reads of business data (placements, allocations, "
        "experiment reports, /metrics) need it (or the write key).",
    )
    decide_api_key: SecretStr | None = Field(
        None,
        description="When set (env ADBANDIT_DECIDE_API_KEY), decisions and Prebid floors need it (or the write key).",
    )
    decision_key: SecretStr | None = Field(
        None,
        description="Secret (>= 16 characters) signing decision ids (env ADBANDIT_DECISION_KEY); "
        "default: a random key in STATE_DIR/decision.key. Replicas must share it.",
    )
    max_event_skew_s: float = Field(
        300.0, ge=0, description="Outcome events dated more than this many seconds after the server clock are rejected."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="A request body not received within this many seconds is answered 408."
    )
    max_body_bytes: int = Field(16 * 2**20, gt=0, description="Largest request body accepted (413 above).")
    default_policy: str = Field("ts_gmm", description="Policy of a new placement's champion variant.")
    dedupe_days: float = Field(7.0, gt=0, description="How long a seen event_id is remembered.")
    snapshot_every_s: float = Field(60.0, gt=0, description="Seconds between automatic snapshots.")
    snapshot_max_deltas: int = Field(
        10, ge=0, description="Incremental snapshots after a whole one before the next whole one (0: always whole)."
    )
    snapshot_delta_share: float = Field(
        0.5, ge=0, description="A whole snapshot is next once the incremental ones reach this share of its bytes."
    )
    fsync: bool = Field(True, description="fsync the event log before acknowledging outcomes.")
    history_every_s: float = Field(
        30.0, ge=0, description="Seconds between points of the console's history (STATE_DIR/history); 0: none kept."
    )
    history_max_points: int = Field(
        2880, ge=4, description="Points kept per history series; beyond, the older half is thinned to half resolution."
    )
    history_max_segments: int = Field(
        16, ge=0, description="Segments per placement with a history of their own (the first seen), besides '*'."
    )
    model: str | None = Field(
        None, description="MLflow model alias (e.g. 'champion') whose state is loaded at start-up."
    )
    model_name: str = Field("adbandit-policy", description="MLflow registered model name.")
    demo: bool = Field(False, description="Create a demo placement when the state dir holds none.")
    demo_feed_s: float = Field(
        0.0, ge=0, description="With demo: feed the demo placement synthetic traffic every this many seconds; 0: off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "text", "json"] = Field(
        "auto", description="Logs on stderr: text, JSON lines, or auto (text on a terminal, JSON otherwise)."
    )
    max_networks: int = Field(
        64, ge=1, le=SCHEMA_MAX_NETWORKS, description="Most networks a placement may have (422 above)."
    )
    max_segment_fields: int = Field(
        8, ge=1, le=SCHEMA_MAX_SEGMENT_FIELDS, description="Most segment_by fields a placement may have (422 above)."
    )
    max_segments: int = Field(
        50_000,
        ge=1,
        description="Most segments per placement; a new segment beyond it is served and learned at the nearest "
        "pooled level (a placement's own limits.max_segments may be lower).",
    )
    max_field_values: int = Field(
        5_000,
        ge=1,
        description="Most distinct values per segment field and placement; a new value beyond it reads '*' "
        "(a placement's own limits.max_field_values may be lower).",
    )
    max_context_fields: int = Field(
        SCHEMA_MAX_CONTEXT_FIELDS, ge=1, le=SCHEMA_MAX_CONTEXT_FIELDS, description="Most fields of a request context."
    )
    max_context_value_chars: int = Field(
        SCHEMA_MAX_CONTEXT_VALUE,
        ge=1,
        le=SCHEMA_MAX_CONTEXT_VALUE,
        description="Longest string value of a request context, in characters.",
    )

    prebid_cors_origins: str = Field(
        "*",
        description="Origins (comma-separated, e.g. 'https://www.example.com,https://m.example.com') whose pages "
        "may fetch GET /v1/prebid/floors and post POST /v1/outcomes (the Prebid analytics script) from a browser "
        "(CORS); '*': any; empty: none.",
    )
    prebid_cache_max_age_s: int = Field(
        300, ge=0, description="Cache-Control max-age (seconds) of the Prebid floors document; 0: no-cache."
    )
    prebid_skip_rate: int = Field(
        0, ge=0, le=100, description="skipRate of the Prebid floors document: percent of auctions run without floors."
    )
    prebid_min_events: float = Field(
        100.0,
        ge=0,
        description="A challenger variant that learned from fewer (discounted) events publishes the champion's "
        "floors in the Prebid floors document.",
    )

    prebid_id_max_age_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="Seconds a floors id of the Prebid floors document (the decision_id its analytics script posts) "
        "stays valid; events with an older one are rejected and the page must fetch its floors again.",
    )
    prebid_page_outcomes: bool = Field(
        True,
        description="With ADBANDIT_API_KEY set, accept POST /v1/outcomes without the write key for events that carry "
        "a valid floors id of the Prebid floors document (what a page's analytics script posts; the signature is "
        "its credential); false: every outcome needs the write key.",
    )

    def cors_origins(self) -> frozenset[str]:
        """The allowed CORS origins of the Prebid floors and outcomes (``"*"`` for any)."""
        return frozenset(o.strip().rstrip("/") for o in self.prebid_cors_origins.split(",") if o.strip())

    def limits(self) -> Limits:
        """The limits on placements, segments and contexts (:mod:`serving.limits`)."""
        return Limits(
            max_networks=self.max_networks,
            max_segment_fields=self.max_segment_fields,
            max_segments=self.max_segments,
            max_field_values=self.max_field_values,
            max_context_fields=self.max_context_fields,
            max_context_value_chars=self.max_context_value_chars,
        )

    @field_validator("api_key", "read_api_key", "decide_api_key", "decision_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment on first use)."""
    return Settings()
