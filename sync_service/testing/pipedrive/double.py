"""A stateful test double of the Pipedrive API parts the connector uses, as an ASGI app.

What it serves (shapes from Pipedrive's API reference and official client; see
docs/connector-pipedrive.md for what is confirmed):

- ``GET /api/v2/persons`` — ``updated_since`` (inclusive) / ``updated_until`` (exclusive),
  RFC 3339; ``sort_by`` ``id`` (default) | ``update_time`` | ``add_time``; ``sort_direction``
  ``asc`` | ``desc``; ``ids`` (≤ 100); ``custom_fields`` (≤ 15 keys); ``limit`` (default 100,
  at most 500); ``cursor``. Answers ``{success, data: [person], additional_data:
  {next_cursor}}``, ``next_cursor`` null on the last page. Deleted persons are not listed.
  A person: ``{id, name, first_name, last_name, emails: [{value, primary, label}], phones,
  owner_id, org_id, add_time, update_time, visible_to, custom_fields: {hash: value}}``.
- ``GET /api/v2/personFields`` (``limit``, ``cursor``) — ``{success, data: [{field_code,
  field_name, field_type, is_custom_field, options?}], additional_data: {next_cursor}}``;
  custom fields are keyed by 40-character hashes.
- ``GET /v1/recents?since_timestamp=YYYY-MM-DD HH:MM:SS&items=person&start&limit`` — changes
  at or after the time, deletions included (``data.active_flag`` false), oldest first:
  ``{success, data: [{item, id, data}], additional_data: {pagination: {start, limit,
  more_items_in_collection, next_start}}}``.
- Auth by ``x-api-token`` header (or ``api_token`` query parameter); a missing or wrong token is
  401 ``{success: false, error: "unauthorized access", errorCode: 401, ...}``.
- 429 ``{success: false, error: "Request over limit", errorCode: 429}`` with ``Retry-After`` and
  ``x-ratelimit-*`` headers, on demand (``rate_limit(n)``).

Cursors are opaque to the client; here they hold the last (sort value, id) seen, so a page read
after a change neither repeats nor skips an unchanged person.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

__all__ = ["DEFAULT_TOKEN", "LoggedRequest", "PipedriveDouble", "rfc3339"]

DEFAULT_TOKEN = "pipedrive-test-token"  # noqa: S105 - the double's demo token
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
_STANDARD_FIELDS = [("id", "ID", "int"), ("name", "Name", "varchar"),
                    ("first_name", "First name", "varchar"),
                    ("last_name", "Last name", "varchar"), ("emails", "Email", "varchar"),
                    ("phones", "Phone", "phone"), ("owner_id", "Owner", "user"),
                    ("org_id", "Organization", "org"), ("add_time", "Person created", "date"),
                    ("update_time", "Update time", "date"),
                    ("visible_to", "Visible to", "visible_to")]


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    params: dict[str, str]
    status: int
    time: float = 0.0  # time.monotonic() on arrival


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _v1_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class PipedriveDouble:
    """One Pipedrive company; see the module docstring. Thread-safe."""

    def __init__(self, *, token: str = DEFAULT_TOKEN) -> None:
        self.lock = threading.RLock()
        self.token = token
        self.now = _EPOCH
        self._ids = itertools.count(1)
        self._persons: dict[int, dict[str, Any]] = {}
        self._fields: list[dict[str, Any]] = [
            {"field_code": code, "field_name": name, "field_type": kind,
             "is_custom_field": False, "is_optional_response_field": False}
            for code, name, kind in _STANDARD_FIELDS]
        self._rate_limited = 0
        self._rate_after = 0
        self.ties_descending = False  # list persons sharing a sort value by descending id
        self._version = 0  # bumped by every change; keys the cached sort order
        self._order_cache: tuple[Any, list[tuple[Any, int]], list[dict[str, Any]]] | None = None
        self._log: list[LoggedRequest] = []
        self._app: ASGIApp | None = None

    @property
    def app(self) -> ASGIApp:
        with self.lock:
            if self._app is None:
                self._app = _build_app(self)
            return self._app

    # seeding and changes ---------------------------------------------------------------------
    def add_custom_field(self, name: str, field_type: str = "varchar",
                         options: Iterable[str] = ()) -> str:
        """A custom person field; returns its 40-character key. Enum options get ids 1, 2..."""
        with self.lock:
            code = hashlib.sha1(f"{name}/{len(self._fields)}".encode()).hexdigest()  # noqa: S324
            entry: dict[str, Any] = {"field_code": code, "field_name": name,
                                     "field_type": field_type, "is_custom_field": True,
                                     "is_optional_response_field": False}
            labels = list(options)
            if labels:
                entry["options"] = [{"id": i, "label": label}
                                    for i, label in enumerate(labels, start=1)]
            self._fields.append(entry)
            return code

    def add(self, *, name: str | None = None, first_name: str | None = None,
            last_name: str | None = None, emails: Iterable[str | Mapping[str, Any]] = (),
            custom: Mapping[str, Any] | None = None, at: datetime | None = None,
            person_id: int | None = None) -> int:
        """A new person; ``emails`` as addresses (the first is primary) or full entries."""
        with self.lock:
            if person_id is None:
                person_id = next(self._ids)
                while person_id in self._persons:
                    person_id = next(self._ids)
            if person_id in self._persons:
                raise KeyError(f"person {person_id} exists")
            stamp = self._stamp(at)
            full = name or " ".join(p for p in (first_name, last_name) if p) or f"P{person_id}"
            self._persons[person_id] = {
                "id": person_id, "name": full, "first_name": first_name,
                "last_name": last_name, "emails": _emails(emails), "phones": [],
                "owner_id": 1, "org_id": None, "add_time": stamp, "update_time": stamp,
                "visible_to": 3, "custom_fields": dict(custom or {}), "active": True,
            }
            return person_id

    def update(self, person_id: int, *, at: datetime | None = None,
               emails: Iterable[str | Mapping[str, Any]] | None = None,
               custom: Mapping[str, Any] | None = None, **values: Any) -> None:
        with self.lock:
            person = self._persons[person_id]
            person.update(values)
            if emails is not None:
                person["emails"] = _emails(emails)
            if custom:
                person["custom_fields"].update(custom)
            person["update_time"] = self._stamp(at)

    def delete(self, person_id: int, *, at: datetime | None = None) -> None:
        """Mark the person deleted: gone from lists, seen by recents with active_flag false."""
        with self.lock:
            person = self._persons[person_id]
            person["active"] = False
            person["update_time"] = self._stamp(at)

    def person(self, person_id: int) -> dict[str, Any]:
        with self.lock:
            return dict(self._persons[person_id])

    def persons(self) -> list[dict[str, Any]]:
        """The persons a list would show (not deleted), by id."""
        with self.lock:
            return [dict(p) for p in self._persons.values() if p["active"]]

    # faults and inspection -------------------------------------------------------------------
    def rate_limit(self, requests: int, *, after: int = 0) -> None:
        """After ``after`` more requests, the next ``requests`` answer 429."""
        with self.lock:
            self._rate_after = after
            self._rate_limited += requests

    def custom_field_code(self, name: str) -> str:
        """The 40-character key of the custom field called ``name``."""
        with self.lock:
            return next(str(f["field_code"]) for f in self._fields
                        if f["is_custom_field"] and f["field_name"] == name)

    def requests(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log)

    # internals -------------------------------------------------------------------------------
    def _stamp(self, at: datetime | None) -> datetime:
        self._version += 1
        if at is not None:
            stamp = at.astimezone(UTC).replace(microsecond=0)  # Pipedrive keeps seconds
            self.now = max(self.now, stamp)
            return stamp
        self.now += timedelta(seconds=1)
        return self.now

    def render(self, person: Mapping[str, Any], keys: set[str] | None) -> dict[str, Any]:
        custom = {k: v for k, v in person["custom_fields"].items() if keys is None or k in keys}
        for entry in self._fields:
            if entry["is_custom_field"] and (keys is None or entry["field_code"] in keys):
                custom.setdefault(entry["field_code"], None)
        out = {k: v for k, v in person.items() if k not in ("active", "custom_fields")}
        out["add_time"] = rfc3339(person["add_time"])
        out["update_time"] = rfc3339(person["update_time"])
        out["custom_fields"] = custom
        return out

    def answer(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        headers = {"x-ratelimit-limit": "80", "x-ratelimit-remaining": "79",
                   "x-ratelimit-reset": "2"}
        params = dict(request.query_params)
        token = request.headers.get("x-api-token") or params.pop("api_token", None)
        if token != self.token:
            return 401, _failure("unauthorized access", 401), headers
        if self._rate_limited > 0 and self._rate_after > 0:
            self._rate_after -= 1
        elif self._rate_limited > 0:
            self._rate_limited -= 1
            headers.update({"x-ratelimit-remaining": "0", "Retry-After": "1"})
            return 429, _failure("Request over limit", 429), headers
        routes = {"/api/v2/persons": self._list, "/api/v2/personFields": self._field_list,
                  "/v1/recents": self._recents}
        route = routes.get(request.url.path)
        if route is None:
            return 404, _failure("Unknown method .", 404), headers
        try:
            return 200, route(params), headers
        except _Invalid as exc:
            return 400, {"success": False, "error": str(exc),
                         "code": "ERR_SCHEMA_VALIDATION_FAILED", "error_info": _INFO,
                         "data": None, "additional_data": None}, headers

    def _list(self, params: Mapping[str, str]) -> dict[str, Any]:
        limit = _limit(params)
        sort_by = params.get("sort_by", "id")
        if sort_by not in ("id", "update_time", "add_time"):
            raise _Invalid(f"Validation failed: sort_by: must be one of id, update_time, "
                           f"add_time; got {sort_by!r}")
        descending = params.get("sort_direction", "asc") == "desc"
        wanted = _int_list(params["ids"], "ids", 100) if "ids" in params else None
        since, until = _time(params, "updated_since"), _time(params, "updated_until")
        keys = None
        if params.get("custom_fields"):
            keys = set(params["custom_fields"].split(","))
            if len(keys) > 15:
                raise _Invalid("Validation failed: custom_fields: at most 15 keys")
        order, rows = self._sorted(sort_by)
        after = _decode_cursor(params.get("cursor"), sort_by)
        if descending:
            index = len(order) - 1 if after is None else bisect.bisect_left(order, after) - 1
            step = -1
        else:
            index = 0 if after is None else bisect.bisect_right(order, after)
            step = 1
        page: list[tuple[tuple[Any, int], dict[str, Any]]] = []
        more = False
        while 0 <= index < len(rows):
            person = rows[index]
            if ((wanted is None or person["id"] in wanted)
                    and (since is None or person["update_time"] >= since)
                    and (until is None or person["update_time"] < until)):
                if len(page) == limit:
                    more = True
                    break
                page.append((order[index], person))
            index += step
        return {"success": True, "data": [self.render(p, keys) for _, p in page],
                "additional_data": {"next_cursor": _encode_cursor(page[-1][0])
                                    if more else None}}

    def _sorted(self, sort_by: str) -> tuple[list[tuple[Any, int]], list[dict[str, Any]]]:
        """Active persons in ascending (sort value, id) order, kept until the next change."""
        tie = -1 if self.ties_descending and sort_by != "id" else 1
        cache_key = (sort_by, tie, self._version)
        if self._order_cache is None or self._order_cache[0] != cache_key:
            keyed = sorted(((p[sort_by] if sort_by != "id" else 0, tie * p["id"]), p)
                           for p in self._persons.values() if p["active"])
            self._order_cache = (cache_key, [k for k, _ in keyed], [p for _, p in keyed])
        return self._order_cache[1], self._order_cache[2]

    def _field_list(self, params: Mapping[str, str]) -> dict[str, Any]:
        limit = _limit(params)
        start = int(base64.b64decode(params["cursor"]).decode()) if params.get("cursor") else 0
        page = self._fields[start:start + limit]
        more = start + limit < len(self._fields)
        cursor = base64.b64encode(str(start + limit).encode()).decode() if more else None
        return {"success": True, "data": [dict(f) for f in page],
                "additional_data": {"next_cursor": cursor}}

    def _recents(self, params: Mapping[str, str]) -> dict[str, Any]:
        raw = params.get("since_timestamp")
        if not raw:
            raise _Invalid("since_timestamp is required")
        try:
            since = datetime.strptime(raw, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError as exc:
            raise _Invalid("since_timestamp: expected YYYY-MM-DD HH:MM:SS") from exc
        start, limit = int(params.get("start", "0")), min(int(params.get("limit", "100")), 500)
        items = params.get("items", "person").split(",")
        rows = sorted((p for p in self._persons.values() if p["update_time"] >= since),
                      key=lambda p: (p["update_time"], p["id"])) if "person" in items else []
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        data = [{"item": "person", "id": p["id"], "data": {
            "id": p["id"], "name": p["name"], "active_flag": p["active"],
            "update_time": _v1_time(p["update_time"]), "add_time": _v1_time(p["add_time"]),
            "email": [dict(e) for e in p["emails"]]}} for p in page]
        pagination: dict[str, Any] = {"start": start, "limit": limit,
                                      "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return {"success": True, "data": data,
                "additional_data": {"since_timestamp": raw, "pagination": pagination}}

    def log(self, entry: LoggedRequest) -> None:
        with self.lock:
            self._log.append(entry)


class _Invalid(Exception):
    pass


def _failure(message: str, code: int) -> dict[str, Any]:
    return {"success": False, "error": message, "errorCode": code, "error_info": _INFO,
            "data": None, "additional_data": None}


def _emails(emails: Iterable[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    entries = list(emails)
    explicit = any(not isinstance(e, str) and e.get("primary") for e in entries)
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            out.append({"value": entry, "primary": i == 0 and not explicit, "label": "work"})
        else:
            out.append({"value": entry["value"], "primary": bool(entry.get("primary")),
                        "label": entry.get("label", "work")})
    return out


def _limit(params: Mapping[str, str]) -> int:
    raw = params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise _Invalid("Validation failed: limit: Parameter 'limit' must be an integer "
                       "between 1 and 500")
    return int(raw)


def _int_list(raw: str, name: str, most: int) -> set[int]:
    parts = [p for p in raw.split(",") if p]
    if len(parts) > most or not all(p.isdigit() for p in parts):
        raise _Invalid(f"Validation failed: {name}: up to {most} integer ids")
    return {int(p) for p in parts}


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _Invalid(f"Validation failed: {name}: must be an RFC 3339 date-time") from exc
    if value.tzinfo is None:
        raise _Invalid(f"Validation failed: {name}: must be an RFC 3339 date-time")
    return value.astimezone(UTC)


def _encode_cursor(key: tuple[Any, int]) -> str:
    value = rfc3339(key[0]) if isinstance(key[0], datetime) else key[0]
    return base64.urlsafe_b64encode(json.dumps([value, key[1]]).encode()).decode()


def _decode_cursor(raw: str | None, sort_by: str) -> tuple[Any, int] | None:
    if not raw:
        return None
    try:
        value, person_id = json.loads(base64.urlsafe_b64decode(raw.encode()))
        if sort_by != "id":
            value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return value, int(person_id)
    except (ValueError, TypeError) as exc:
        raise _Invalid("Validation failed: cursor: invalid cursor") from exc


def _build_app(double: PipedriveDouble) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        arrived = time.monotonic()
        with double.lock:
            status, body, headers = double.answer(request)
            double.log(LoggedRequest(request.method, request.url.path,
                                     dict(request.query_params), status, arrived))
        return JSONResponse(body, status_code=status, headers=headers)

    return Starlette(routes=[
        Route("/api/v2/persons", endpoint, methods=["GET"]),
        Route("/api/v2/personFields", endpoint, methods=["GET"]),
        Route("/v1/recents", endpoint, methods=["GET"]),
    ])
