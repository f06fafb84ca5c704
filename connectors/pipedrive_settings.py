"""Settings of the Pipedrive connector: ``[pipelines.source]`` with ``connector = "pipedrive"``.

``fields`` names what each record carries besides ``id``, ``email`` (the primary address) and
``update_time``: a person's standard keys (``first_name``, ``last_name``, ``name``, ``org_id``...)
or a custom field's human name as Pipedrive shows it ("Plan tier"). Custom names are resolved to
Pipedrive's 40-character keys through the person-fields endpoint by ``check()`` and every read,
so renaming a field in Pipedrive is a configuration change, and a name that matches no field is a
``ConfigError`` listing the names that exist.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator

from sync_service.connector import ConnectorSettings
from sync_service.units import parse_rate

from .sql_settings import time_lookback

DEFAULT_API_URL = "https://api.pipedrive.com"


class PipedriveSettings(ConnectorSettings):
    """Where and how the Pipedrive connector reads persons."""

    connector: Literal["pipedrive"] = "pipedrive"
    api_url: str = Field(
        DEFAULT_API_URL, description="API base URL (your company domain works too, e.g. "
        "https://acme.pipedrive.com; set it for a proxy or a test double)")
    token: str = Field(repr=False, description="API token (use ${PIPEDRIVE_TOKEN}); sent as "
                       "the x-api-token header, never logged")
    fields: tuple[str, ...] = Field(
        ("first_name", "last_name"),
        description="person keys or custom field names to read; id, email and update_time are "
        "always there")
    deletions: bool = Field(
        True, description="find persons deleted since the watermark through the recents "
        "endpoint and take them out of the lists")
    lookback: timedelta = Field(
        timedelta(0), description="how far behind the watermark each incremental read starts, "
        "to catch changes whose timestamp was set before they committed: '30s', '2m', or seconds"
    )
    rate: str = Field(
        "20/2s", description="pace of requests: Pipedrive's burst limit per 2-second window "
        "depends on the plan; the default suits the smallest, raise it for yours")
    page_size: int = Field(500, ge=1, le=500, description="persons per page (1..500)")
    timeout: float = Field(30.0, gt=0, description="seconds per HTTP request")
    max_retries: int = Field(8, ge=0, description="retries of one request on 429, 5xx, "
                             "timeouts and dropped connections")

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any) -> timedelta:
        return time_lookback(value)

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (set it with ${PIPEDRIVE_TOKEN})")
        return value.strip()

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in value):
            raise ValueError("field names must not be empty")
        reserved = {"id", "email", "update_time"} & set(value)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))} are always read; leave them out")
        return value
