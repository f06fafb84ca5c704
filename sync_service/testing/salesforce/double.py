"""A stateful test double of the Salesforce REST API parts the connector uses, as an ASGI app.

What it serves (shapes from Salesforce's REST API reference; see docs/connector-salesforce.md):

- ``POST /services/oauth2/token`` (form-encoded): the client-credentials flow
  (``grant_type=client_credentials``, ``client_id``, ``client_secret``) and the JWT-bearer flow
  (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``, ``assertion`` = an RS256 JWT
  with ``iss`` = the consumer key, ``sub`` = the username, ``aud`` = the login host, ``exp``),
  answering ``{access_token, instance_url, id, token_type, issued_at, signature, scope}`` or a
  400 ``{error, error_description}`` (``invalid_client``, ``invalid_grant``,
  ``unsupported_grant_type``).
- ``GET /services/data/vNN.N/query?q=`` and ``/queryAll?q=``: ``{totalSize, done,
  nextRecordsUrl?, records: [{attributes: {type, url}, ...}]}``, pages of up to 2,000 records
  (``Sforce-Query-Options: batchSize=N`` asks for fewer, 200 at least; ``batch_size`` lowers
  the double's own maximum, for tests that cross pages), followed with
  ``GET nextRecordsUrl``. ``query`` leaves out deleted records; ``queryAll`` returns them with
  ``IsDeleted: true`` until they are purged. A query's result is fixed when it runs.
- Errors as Salesforce words them: a JSON array ``[{message, errorCode}]`` —
  401 ``INVALID_SESSION_ID`` (no, unknown or expired token), 400 ``MALFORMED_QUERY`` /
  ``INVALID_FIELD`` / ``INVALID_TYPE`` (see ``soql``), 400 ``INVALID_QUERY_LOCATOR``,
  403 ``REQUEST_LIMIT_EXCEEDED`` (the org's API requests are used up: there is no 429).
- Every ``/services/data`` answer carries ``Sforce-Limit-Info: api-usage=USED/MAX``.

Test controls: ``add`` / ``update`` / ``delete`` / ``purge`` records (each change stamps
``SystemModstamp`` from the double's clock, which moves one second per change unless a
``modstamp`` is given, so ties are made on purpose), ``expire_tokens()`` and
``expire_tokens_after(n)`` (the tokens issued so far die after n more data requests:
mid-read), ``expire_next_token_after(n)`` (the same for the next token issued),
``limit_exceeded(n)`` (the next n data requests answer 403), ``requests()`` (the log).
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from sync_service.testing.salesforce.soql import Query, SoqlError, parse

__all__ = ["API_VERSION", "JWT_BEARER", "LoggedRequest", "SalesforceDouble"]

API_VERSION = "62.0"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_BATCH = 2000
MIN_BATCH = 200
_PREFIX = {"Contact": "003", "Lead": "00Q"}
_STANDARD = ("Id", "IsDeleted", "SystemModstamp", "CreatedDate", "LastModifiedDate", "Email",
             "FirstName", "LastName", "Name", "Title", "Phone", "HasOptedOutOfEmail")
_DATETIMES = {"SystemModstamp", "CreatedDate", "LastModifiedDate"}
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int


def format_datetime(value: datetime) -> str:
    """Salesforce's dateTime rendering: ``2026-01-02T03:04:05.000+0000``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


class SalesforceDouble:
    """One Salesforce org with Contact and Lead; see the module docstring. Thread-safe."""

    def __init__(
        self,
        *,
        client_id: str = "test-client-id",
        client_secret: str = "test-client-secret",  # noqa: S107 - the double's demo secret
        username: str = "integration@acme.test",
        public_key: str | bytes | None = None,
        audience: str = "https://login.salesforce.com",
        api_limit: int = 15000,
        batch_size: int = MAX_BATCH,
    ) -> None:
        self.lock = threading.RLock()
        self.client_id, self.client_secret, self.username = client_id, client_secret, username
        self.public_key, self.audience = public_key, audience
        self.api_limit, self.api_used = api_limit, 0
        self.batch_size = batch_size
        self.now = _EPOCH
        self._records: dict[str, dict[str, dict[str, Any]]] = {o: {} for o in _PREFIX}
        self._fields: dict[str, dict[str, str]] = {
            o: {f.lower(): f for f in _STANDARD} for o in _PREFIX}
        self._ids = itertools.count(1)
        self._tokens: dict[str, int | None] = {}  # token -> data requests left (None: no end)
        self._limit_exceeded = 0
        self._limit_after = 0
        self._next_token_budget: int | None = None
        self._cursors: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
        self._log: list[LoggedRequest] = []
        self._app: ASGIApp | None = None

    @property
    def app(self) -> ASGIApp:
        with self.lock:
            if self._app is None:
                self._app = _build_app(self)
            return self._app

    # seeding and changes ---------------------------------------------------------------------
    def add_field(self, object_name: str, name: str) -> None:
        """A custom field (``Plan__c``) on ``object_name``."""
        with self.lock:
            self._fields[object_name][name.lower()] = name

    def add(self, object_name: str = "Contact", *, modstamp: datetime | None = None,
            record_id: str | None = None, **values: Any) -> str:
        """A new record; returns its Id (18 characters unless ``record_id`` is given)."""
        with self.lock:
            if record_id is None:
                record_id = f"{_PREFIX[object_name]}{next(self._ids):012d}"
                record_id += _checksum(record_id)
            if any(record_id in rows for rows in self._records.values()):
                raise KeyError(f"Id {record_id} exists")
            row: dict[str, Any] = dict.fromkeys(self._fields[object_name].values())
            stamp = self._stamp(modstamp)
            row.update(Id=record_id, IsDeleted=False, CreatedDate=stamp, HasOptedOutOfEmail=False)
            self._set(object_name, row, values, stamp)
            self._records[object_name][record_id] = row
            return record_id

    def update(self, record_id: str, *, modstamp: datetime | None = None, **values: Any) -> None:
        with self.lock:
            object_name, row = self._find(record_id)
            self._set(object_name, row, values, self._stamp(modstamp))

    def delete(self, record_id: str, *, modstamp: datetime | None = None) -> None:
        """Move the record to the recycle bin (``IsDeleted`` true, seen by queryAll only)."""
        with self.lock:
            object_name, row = self._find(record_id)
            self._set(object_name, row, {"IsDeleted": True}, self._stamp(modstamp))

    def purge(self, record_id: str) -> None:
        """Empty the record out of the recycle bin: no API sees it any more."""
        with self.lock:
            object_name, _row = self._find(record_id)
            del self._records[object_name][record_id]

    def record(self, record_id: str) -> dict[str, Any]:
        """A copy of one record's values (deleted ones included)."""
        with self.lock:
            return dict(self._find(record_id)[1])

    def records(self, object_name: str = "Contact", *, deleted: bool = False
                ) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self._records[object_name].values()
                    if deleted or not r["IsDeleted"]]

    # faults ----------------------------------------------------------------------------------
    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (401 INVALID_SESSION_ID)."""
        with self.lock:
            self._tokens.clear()

    def expire_tokens_after(self, requests: int) -> None:
        """Tokens issued so far die after ``requests`` more data requests (new ones live on)."""
        with self.lock:
            for token in self._tokens:
                self._tokens[token] = requests

    def expire_next_token_after(self, requests: int) -> None:
        """The next token issued dies after ``requests`` data requests (later ones live on)."""
        with self.lock:
            self._next_token_budget = requests

    def limit_exceeded(self, requests: int, *, after: int = 0) -> None:
        """After ``after`` more data requests, the next ``requests`` answer 403
        REQUEST_LIMIT_EXCEEDED."""
        with self.lock:
            self._limit_after = after
            self._limit_exceeded += requests

    def requests(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log)

    # internals -------------------------------------------------------------------------------
    def _stamp(self, modstamp: datetime | None) -> datetime:
        if modstamp is not None:
            self.now = max(self.now, modstamp)
            return modstamp.astimezone(UTC)
        self.now += timedelta(seconds=1)
        return self.now

    def _set(self, object_name: str, row: dict[str, Any], values: Mapping[str, Any],
             stamp: datetime) -> None:
        for name, value in values.items():
            canonical = self._fields[object_name].get(name.lower())
            if canonical is None:
                raise KeyError(f"{object_name} has no field {name!r} (add_field first)")
            row[canonical] = value
        row["SystemModstamp"] = row["LastModifiedDate"] = stamp

    def _find(self, record_id: str) -> tuple[str, dict[str, Any]]:
        for object_name, rows in self._records.items():
            if record_id in rows:
                return object_name, rows[record_id]
        raise KeyError(record_id)

    def issue_token(self) -> str:
        token = "00D000000000001!" + secrets.token_urlsafe(24)
        self._tokens[token], self._next_token_budget = self._next_token_budget, None
        return token

    def admit(self, token: str | None) -> tuple[int, Any] | None:
        """Count one data request; an error answer if it must not be served."""
        if token is None or token not in self._tokens:
            return 401, [{"message": "Session expired or invalid",
                          "errorCode": "INVALID_SESSION_ID"}]
        left = self._tokens[token]
        if left is not None:
            if left <= 0:
                del self._tokens[token]
                return 401, [{"message": "Session expired or invalid",
                              "errorCode": "INVALID_SESSION_ID"}]
            self._tokens[token] = left - 1
        if self._limit_exceeded > 0 and self._limit_after > 0:
            self._limit_after -= 1
        elif self._limit_exceeded > 0 or self.api_used >= self.api_limit:
            self._limit_exceeded = max(0, self._limit_exceeded - 1)
            return 403, [{"message": "TotalRequests Limit exceeded.",
                          "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
        self.api_used += 1
        return None

    def run_query(self, soql: str, *, all_rows: bool, verb: str, batch: int) -> dict[str, Any]:
        query = parse(soql, self._fields)
        rows = [r for r in self._records[query.object_name].values()
                if (all_rows or not r["IsDeleted"]) and query.where(r)]
        for name, descending in reversed(query.order):
            rows.sort(key=_by(name), reverse=descending)
        if query.limit is not None:
            rows = rows[:query.limit]
        rendered = [_render(query, r) for r in rows]
        locator = "01g" + secrets.token_hex(6).upper()
        self._cursors[locator] = (verb, query.object_name, rendered)
        return self.page(locator, 0, batch)

    def page(self, locator: str, offset: int, batch: int) -> dict[str, Any]:
        verb, _object_name, rows = self._cursors[locator]
        chunk = rows[offset:offset + batch]
        body: dict[str, Any] = {"totalSize": len(rows), "done": offset + batch >= len(rows),
                                "records": chunk}
        if not body["done"]:
            body["nextRecordsUrl"] = (f"/services/data/v{API_VERSION}/{verb}/{locator}-"
                                      f"{offset + batch}")
        else:
            del self._cursors[locator]
        return body

    def log(self, entry: LoggedRequest) -> None:
        with self.lock:
            self._log.append(entry)


def _checksum(record_id: str) -> str:
    # Stands in for Salesforce's case-safe suffix: three characters derived from the id.
    digest = hashlib.sha256(record_id.encode()).hexdigest().upper()
    return "".join(c if c.isalpha() else chr(ord("A") + int(c)) for c in digest[:3])


def _by(name: str) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    def key(row: Mapping[str, Any]) -> tuple[int, Any]:
        value = row.get(name)
        # SOQL sorts nulls first in ascending order by default.
        return (0, "") if value is None else (1, value)

    return key


def _render(query: Query, row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"attributes": {
        "type": query.object_name,
        "url": f"/services/data/v{API_VERSION}/sobjects/{query.object_name}/{row['Id']}"}}
    for name in query.fields:
        value = row.get(name)
        out[name] = format_datetime(value) if isinstance(value, datetime) else value
    return out


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() in ("bearer", "oauth") else None


def _batch(request: Request, double: SalesforceDouble) -> int:
    options = request.headers.get("sforce-query-options", "")
    for part in options.split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "batchsize" and value.isdigit():
            return min(max(MIN_BATCH, int(value)), double.batch_size)
    return double.batch_size


def _build_app(double: SalesforceDouble) -> ASGIApp:
    async def token(request: Request) -> Response:
        values = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        with double.lock:
            status, body = _grant(double, values, str(request.base_url).rstrip("/"))
            double.log(LoggedRequest("POST", request.url.path, "", status))
        return JSONResponse(body, status_code=status)

    async def data(request: Request) -> Response:
        with double.lock:
            status, body = _data(double, request)
            double.log(LoggedRequest(request.method, request.url.path,
                                     request.url.query, status))
            usage = f"api-usage={double.api_used}/{double.api_limit}"
        return JSONResponse(body, status_code=status, headers={"Sforce-Limit-Info": usage})

    return Starlette(routes=[
        Route("/services/oauth2/token", token, methods=["POST"]),
        Route("/services/data/{rest:path}", data, methods=["GET"]),
    ])


def _grant(double: SalesforceDouble, form: Mapping[str, str], base: str) -> tuple[int, Any]:
    grant = form.get("grant_type")
    if grant == "client_credentials":
        if (form.get("client_id"), form.get("client_secret")) != (double.client_id,
                                                                  double.client_secret):
            return 400, {"error": "invalid_client",
                         "error_description": "invalid client credentials"}
    elif grant == JWT_BEARER:
        refusal = _check_assertion(double, form.get("assertion", ""))
        if refusal is not None:
            return 400, {"error": "invalid_grant", "error_description": refusal}
    else:
        return 400, {"error": "unsupported_grant_type",
                     "error_description": "grant type not supported"}
    issued = str(int(datetime.now(UTC).timestamp() * 1000))
    return 200, {"access_token": double.issue_token(), "instance_url": base,
                 "id": f"{base}/id/00D000000000001/005000000000001", "token_type": "Bearer",
                 "issued_at": issued, "signature": secrets.token_urlsafe(32), "scope": "api"}


def _check_assertion(double: SalesforceDouble, assertion: str) -> str | None:
    if double.public_key is None:
        return "invalid assertion"
    try:
        claims = jwt.decode(assertion, double.public_key, algorithms=["RS256"],
                            audience=double.audience, issuer=double.client_id,
                            options={"require": ["exp", "iss", "sub", "aud"]})
    except jwt.ExpiredSignatureError:
        return "expired authorization code"
    except jwt.InvalidAudienceError:
        return "audience is invalid"
    except jwt.PyJWTError:
        return "invalid assertion"
    if claims.get("sub") != double.username:
        return "user hasn't approved this consumer"
    return None


def _data(double: SalesforceDouble, request: Request) -> tuple[int, Any]:
    refusal = double.admit(_bearer(request))
    if refusal is not None:
        return refusal
    parts = request.path_params["rest"].strip("/").split("/")
    if len(parts) < 2 or parts[0] != f"v{API_VERSION}" or parts[1] not in ("query", "queryAll"):
        return 404, [{"errorCode": "NOT_FOUND",
                      "message": "The requested resource does not exist"}]
    verb, batch = parts[1], _batch(request, double)
    if len(parts) == 3:
        return _next_page(double, parts[2], batch)
    soql = request.query_params.get("q")
    if not soql:
        return 400, [{"errorCode": "MALFORMED_QUERY",
                      "message": "A query string has to be specified"}]
    try:
        return 200, double.run_query(soql, all_rows=verb == "queryAll", verb=verb, batch=batch)
    except SoqlError as exc:
        return 400, [{"message": exc.message, "errorCode": exc.error_code}]


def _next_page(double: SalesforceDouble, locator_offset: str, batch: int) -> tuple[int, Any]:
    locator, _, offset = locator_offset.rpartition("-")
    if locator not in double._cursors or not offset.isdigit():
        return 400, [{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}]
    return 200, double.page(locator, int(offset), batch)


def seed_contacts(double: SalesforceDouble, rows: Iterable[Mapping[str, Any]],
                  object_name: str = "Contact") -> list[str]:
    """Add many records at once; returns their ids in order."""
    return [double.add(object_name, **dict(row)) for row in rows]
