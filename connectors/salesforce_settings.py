"""Settings of the Salesforce connector: ``[pipelines.source]`` with ``connector = "salesforce"``.

Validation happens here, before any request: one OAuth flow fully configured (client
credentials: ``client_id`` + ``client_secret``; JWT bearer: ``client_id`` + ``username`` +
``private_key`` or ``private_key_file``), field names that are SOQL identifiers, a page size
Salesforce accepts (200..2000). Whether the fields exist is only known by asking Salesforce:
``SalesforceConnector.check()`` does.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sync_service.connector import ConnectorSettings

from .sql_settings import time_lookback

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VERSION = re.compile(r"^\d{2,3}\.\d$")
_GENERIC_LOGIN_HOSTS = ("login.salesforce.com", "test.salesforce.com")
ALWAYS = ("Id", "SystemModstamp", "IsDeleted")  # read whatever `fields` says


class SalesforceSettings(ConnectorSettings):
    """Where and how the Salesforce connector reads Contacts or Leads."""

    connector: Literal["salesforce"] = "salesforce"
    login_url: str = Field(
        "https://login.salesforce.com",
        description="where tokens come from: {login_url}/services/oauth2/token (the org's My "
        "Domain, e.g. https://acme.my.salesforce.com; the client-credentials flow needs it)",
    )
    api_url: str | None = Field(
        None, description="REST base URL; default: the instance_url the token endpoint answers "
        "(set it for a proxy or a test double)",
    )
    client_id: str = Field(repr=False, description="the connected app's consumer key")
    client_secret: str | None = Field(
        None, repr=False, description="consumer secret: the client-credentials flow")
    username: str | None = Field(None, description="the user a JWT-bearer token acts as")
    private_key: str | None = Field(
        None, repr=False, description="PEM private key signing the JWT (use ${VAR})")
    private_key_file: str | None = Field(None, description="or a file holding that PEM key")
    audience: str | None = Field(
        None, description="the JWT's aud; default https://login.salesforce.com, or "
        "https://test.salesforce.com when login_url is a sandbox")
    object: Literal["Contact", "Lead"] = Field("Contact", description="what to read")
    fields: tuple[str, ...] = Field(
        ("Email", "FirstName", "LastName"),
        description="fields to read (API names); Id, SystemModstamp and IsDeleted are added",
    )
    where: str | None = Field(
        None, description="an extra SOQL condition ANDed into every query (e.g. "
        "\"LeadSource = 'Web'\")")
    lookback: timedelta = Field(
        timedelta(0), description="how far behind the watermark each incremental read starts, "
        "to catch changes whose timestamp was set before they committed: '30s', '2m', or seconds"
    )
    api_version: str = Field("62.0", description="REST API version, e.g. 62.0")
    page_size: int = Field(2000, ge=200, le=2000, description="records per page (200..2000)")
    timeout: float = Field(30.0, gt=0, description="seconds per HTTP request")
    max_retries: int = Field(8, ge=0, description="retries of one request on passing faults")

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any) -> timedelta:
        return time_lookback(value)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one field")
        related = [name for name in value if "." in name]
        if related:
            raise ValueError(f"relationship fields are not supported (read the object's own "
                             f"fields): {', '.join(map(repr, related))}")
        bad = [name for name in value if not _IDENTIFIER.match(name)]
        if bad:
            raise ValueError(f"not Salesforce field API names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("login_url", "api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        value = value.removeprefix("v")
        if not _VERSION.match(value):
            raise ValueError("must look like 62.0")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_flow(self) -> SalesforceSettings:
        keyed = self.private_key is not None or self.private_key_file is not None
        if self.private_key is not None and self.private_key_file is not None:
            raise ValueError("set `private_key` or `private_key_file`, not both")
        if keyed and self.username is None:
            raise ValueError("the JWT-bearer flow (private_key) needs `username`")
        if keyed and self.client_secret is not None:
            raise ValueError("set `client_secret` (client-credentials flow) or `private_key` "
                             "(JWT-bearer flow), not both")
        if not keyed and self.client_secret is None:
            raise ValueError("set `client_secret` (client-credentials flow) or `username` with "
                             "`private_key`/`private_key_file` (JWT-bearer flow)")
        if not keyed and self.login_url.split("://", 1)[-1] in _GENERIC_LOGIN_HOSTS:
            raise ValueError("the client-credentials flow needs the org's My Domain as "
                             "`login_url` (e.g. https://acme.my.salesforce.com); Salesforce does "
                             f"not serve it on {self.login_url}")
        return self

    @property
    def flow(self) -> Literal["client_credentials", "jwt_bearer"]:
        return "client_credentials" if self.client_secret is not None else "jwt_bearer"

    @property
    def jwt_audience(self) -> str:
        if self.audience:
            return self.audience
        sandbox = "test.salesforce.com" in self.login_url or ".sandbox." in self.login_url
        return "https://test.salesforce.com" if sandbox else "https://login.salesforce.com"

    def select_fields(self) -> list[str]:
        """Id, SystemModstamp, IsDeleted, then ``fields`` (each once, case-insensitively)."""
        seen: dict[str, str] = {}
        for name in (*ALWAYS, *self.fields):
            seen.setdefault(name.lower(), name)
        return list(seen.values())
