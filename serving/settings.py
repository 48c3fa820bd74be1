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
    fsync: bool = Field(True, description="fsync the event log before acknowledging outcomes.")
    model: str | None = Field(
        None, description="MLflow model alias (e.g. 'champion') whose state is loaded at start-up."
    )
    model_name: str = Field("adbandit-policy", description="MLflow registered model name.")
    demo: bool = Field(False, description="Create a demo placement when the state dir holds none.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_key", "read_api_key", "decide_api_key", "decision_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment on first use)."""
    return Settings()
