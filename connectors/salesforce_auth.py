"""Salesforce OAuth 2.0 for a daemon: the client-credentials and JWT-bearer flows.

``TokenSource.fetch()`` posts to ``{login_url}/services/oauth2/token`` and returns a ``Session``
(access token and instance URL). A refusal (``invalid_client``, ``invalid_grant``...) is a
``ConfigError`` with Salesforce's ``error`` and ``error_description``: the credentials are
configuration. Transport faults and 5xx are retried by the shared HTTP toolkit.

The JWT is signed with RS256 (PyJWT): ``iss`` the consumer key, ``sub`` the username, ``aud``
the login host (``SalesforceSettings.jwt_audience``), ``exp`` three minutes ahead (Salesforce
accepts at most five).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from sync_service.errors import ApiAuthError, ApiError, ConfigError
from sync_service.httpkit import ApiPolicy, JsonClient, Verdict

from .salesforce_settings import SalesforceSettings

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_JWT_LIFETIME_S = 180


@dataclass(frozen=True, slots=True)
class Session:
    access_token: str
    instance_url: str


@dataclass(frozen=True)
class OAuthPolicy(ApiPolicy):
    """The token endpoint answers 400 ``{error, error_description}`` when it refuses."""

    def verdict(self, status: int, body: Any, response: httpx.Response) -> Verdict:
        if status in (400, 401, 403) and isinstance(body, dict) and "error" in body:
            return Verdict.AUTH
        return super().verdict(status, body, response)

    def message(self, body: Any) -> str:
        if isinstance(body, dict) and "error" in body:
            return f"{body['error']}: {body.get('error_description', '')}".rstrip(": ")
        return super().message(body)


class TokenSource:
    """Fetches access tokens with the configured flow."""

    def __init__(self, settings: SalesforceSettings, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self._key = _private_key(settings) if settings.flow == "jwt_bearer" else None
        self._http = JsonClient(
            policy=OAuthPolicy(api="Salesforce OAuth", config_key="source.login_url",
                               retry_event="salesforce.retry"),
            base_url=settings.login_url, transport=transport, timeout=settings.timeout,
            max_retries=min(settings.max_retries, 3),
        )

    def close(self) -> None:
        self._http.close()

    def fetch(self) -> Session:
        """A new access token; ConfigError when Salesforce refuses the credentials."""
        try:
            body = self._http.request("POST", "/services/oauth2/token", data=self._form(),
                                      group="salesforce.oauth")
        except ApiAuthError as exc:
            raise ConfigError(
                f"source: Salesforce refused the {self.settings.flow.replace('_', '-')} "
                f"credentials at {self.settings.login_url} ({_reason(exc)}); check client_id, "
                + ("client_secret" if self.settings.flow == "client_credentials"
                   else "username and the private key")
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise ApiError("Salesforce OAuth: the token answer has no access_token",
                           api="Salesforce", body=None)
        instance = body.get("instance_url")
        return Session(body["access_token"],
                       str(instance).rstrip("/") if instance else self.settings.login_url)

    def _form(self) -> dict[str, str]:
        settings = self.settings
        if settings.flow == "client_credentials":
            return {"grant_type": "client_credentials", "client_id": settings.client_id,
                    "client_secret": settings.client_secret or ""}
        claims = {"iss": settings.client_id, "sub": settings.username,
                  "aud": settings.jwt_audience, "exp": int(time.time()) + _JWT_LIFETIME_S}
        if self._key is None:
            raise ConfigError("source.private_key: the JWT-bearer flow needs a private key")
        try:
            assertion = jwt.encode(claims, self._key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConfigError(f"source.private_key: cannot sign the JWT with it: {exc}") from exc
        return {"grant_type": JWT_BEARER, "assertion": assertion}


def _private_key(settings: SalesforceSettings) -> Any:
    """The PEM key, loaded (so that a bad key fails at start-up, naming the setting)."""
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415 - JWT flow only
        load_pem_private_key,
    )

    if settings.private_key_file is not None:
        where = "source.private_key_file"
        try:
            pem = Path(settings.private_key_file).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {settings.private_key_file}: "
                              f"{exc.strerror}") from exc
    else:
        where = "source.private_key"
        pem = (settings.private_key or "").replace("\\n", "\n").encode()
    try:
        return load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not an unencrypted PEM private key ({exc})") from exc


def _reason(exc: ApiAuthError) -> str:
    body = exc.body
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']}: {body.get('error_description', '')}".rstrip(": ")
    return str(exc)
