"""A stateful test double of HubSpot's CRM v3 contacts API, as an ASGI app.

Shapes from ``shared/crm-apis.md`` and HubSpot's public reference (see docs/connectors.md for
what is confirmed). What it serves:

- ``GET /crm/v3/objects/contacts?limit=&after=&properties=a,b&archived=`` — contacts in id
  order, ``limit`` ≤ 100 (default 10); ``paging.next.after`` is the next id to read.
  ``archived=true`` lists only archived contacts (with ``archivedAt``).
  ``{results: [{id, properties, createdAt, updatedAt, archived[, archivedAt]}], paging}``.
- ``POST /crm/v3/objects/contacts/search`` — ``{filterGroups: [{filters: [{propertyName,
  operator, value | values}]}], sorts: [{propertyName, direction}], properties, limit, after}``
  → ``{total, results, paging}``. Filter groups are OR-ed (≤ 5), filters within one AND-ed (≤ 6);
  operators EQ, NEQ, LT, LTE, GT, GTE, IN, NOT_IN, HAS_PROPERTY, NOT_HAS_PROPERTY. **One sorting
  rule only** (more is a 400). **Records tied on the sort value come in no promised order**
  (shuffled on every request). ``limit`` ≤ 200. **At most 10,000 results per query**: a page
  reaching past it answers 400. Archived contacts are never found. ``after`` is an offset.
- ``GET /crm/v3/properties/contacts`` — the property definitions (``{results: [{name, label,
  type}]}``).
- Auth: ``Authorization: Bearer <token>``; otherwise 401 ``{status: "error", message,
  correlationId, category: "INVALID_AUTHENTICATION"}``.
- ``rate_limit(n, policy)`` makes the next ``n`` requests answer 429 ``{status: "error", message,
  errorType: "RATE_LIMIT", correlationId, policyName}``; ``X-HubSpot-RateLimit-*`` headers come
  on non-search endpoints.

Property values are strings, as HubSpot sends them; ``lastmodifieddate`` and ``createdate``
are ISO 8601 with milliseconds (``2026-03-01T12:00:00.123Z``) and filter values for them are
epoch milliseconds. Every change stamps ``lastmodifieddate`` with the double's clock: real time
in milliseconds, strictly increasing, unless a change gives ``at``.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import random
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

__all__ = ["DEFAULT_TOKEN", "SEARCH_CAP", "HubSpotDouble", "LoggedRequest", "iso", "millis"]

DEFAULT_TOKEN = "pat-na1-hubspot-test-token"  # noqa: S105 - the double's demo token
SEARCH_CAP = 10_000
DEFAULT_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate",
                      "lastname")
KNOWN_PROPERTIES = (*DEFAULT_PROPERTIES, "hs_additional_emails", "lifecyclestage", "company",
                    "phone", "city", "country", "jobtitle")
_OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "IN", "NOT_IN", "HAS_PROPERTY",
              "NOT_HAS_PROPERTY"}
_TIME_PROPERTIES = {"lastmodifieddate", "createdate"}
_COMPARE = {"EQ": operator.eq, "NEQ": operator.ne, "LT": operator.lt, "LTE": operator.le,
            "GT": operator.gt, "GTE": operator.ge}


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    """Epoch milliseconds as HubSpot writes a datetime property."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int
    body: Any = None


@dataclass
class _Contact:
    id: int
    properties: dict[str, str | None]
    created: int
    modified: int
    archived_at: int | None = None

    def value(self, name: str) -> Any:
        if name == "hs_object_id":
            return self.id
        if name == "lastmodifieddate":
            return self.modified
        if name == "createdate":
            return self.created
        return self.properties.get(name)

    def to_json(self, names: Iterable[str]) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for name in names:
            value = self.value(name)
            props[name] = (iso(value) if name in _TIME_PROPERTIES
                           else None if value is None else str(value))
        body: dict[str, Any] = {"id": str(self.id), "properties": props,
                                "createdAt": iso(self.created), "updatedAt": iso(self.modified),
                                "archived": self.archived_at is not None}
        if self.archived_at is not None:
            body["archivedAt"] = iso(self.archived_at)
        return body


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HubSpotDouble:
    """One HubSpot portal's contacts; see the module docstring. Thread-safe."""

    token: str = DEFAULT_TOKEN
    seed: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self._contacts: dict[int, _Contact] = {}
        self._ids = itertools.count(1001)
        self._last_ms = 0
        self._limited: list[str] = []
        self._unindexed: set[int] = set()
        self._id_order: dict[bool, list[int]] = {}
        self._log: list[LoggedRequest] = []
        self._random = random.Random(self.seed)  # noqa: S311 - shuffles ties, not security
        self._app: ASGIApp | None = None

    @property
    def app(self) -> ASGIApp:
        with self.lock:
            if self._app is None:
                self._app = _build_app(self)
            return self._app

    # seeding and changes ----------------------------------------------------------------------
    def tick(self) -> int:
        """The clock: now in epoch ms, strictly after the last stamp it gave."""
        with self.lock:
            self._last_ms = max(self._last_ms + 1, millis(datetime.now(UTC)))
            return self._last_ms

    def add(self, *, email: str | None = None, properties: Mapping[str, str | None] | None = None,
            at: datetime | int | None = None, contact_id: int | None = None,
            additional_emails: Iterable[str] = ()) -> int:
        """A new contact; returns its id. ``at`` (datetime or epoch ms) stamps it."""
        with self.lock:
            ident = contact_id if contact_id is not None else next(self._ids)
            if ident in self._contacts:
                raise KeyError(f"contact {ident} exists")
            stamp = self._stamp(at)
            props: dict[str, str | None] = {"email": email, **(properties or {})}
            extra = ";".join(additional_emails)
            if extra:
                props["hs_additional_emails"] = extra
            self._contacts[ident] = _Contact(ident, props, stamp, stamp)
            self._id_order.clear()
            return ident

    def add_many(self, count: int, *, at: datetime | int | None = None,
                 email: str = "contact{n}@example.com") -> list[int]:
        """``count`` contacts, emails from the pattern (``{n}`` is the id); one stamp for all."""
        with self.lock:
            stamp = self._stamp(at)
            made = []
            for _ in range(count):
                ident = next(self._ids)
                props: dict[str, str | None] = {"email": email.format(n=ident),
                                                "firstname": f"First{ident}",
                                                "lastname": f"Last{ident}"}
                self._contacts[ident] = _Contact(ident, props, stamp, stamp)
                made.append(ident)
            self._id_order.clear()
            return made

    def update(self, contact_id: int, *, at: datetime | int | None = None,
               **properties: str | None) -> None:
        with self.lock:
            contact = self._contacts[contact_id]
            contact.properties.update(properties)
            contact.modified = self._stamp(at)

    def archive(self, contact_id: int, *, at: datetime | int | None = None) -> None:
        """Delete a contact (HubSpot archives it; it leaves search, joins archived=true)."""
        with self.lock:
            self._contacts[contact_id].archived_at = self._stamp(at)
            self._id_order.clear()

    def hold_from_search(self, *contact_ids: int) -> None:
        """Search does not find these contacts (their last edit is not indexed yet)."""
        with self.lock:
            self._unindexed.update(contact_ids)

    def index_all(self) -> None:
        """Search catches up: every contact is found again."""
        with self.lock:
            self._unindexed.clear()

    def rate_limit(self, count: int = 1, policy: str = "TEN_SECONDLY_ROLLING") -> None:
        """The next ``count`` requests answer 429 with this ``policyName``."""
        with self.lock:
            self._limited.extend([policy] * count)

    def contacts(self, *, archived: bool = False) -> dict[int, dict[str, Any]]:
        """id → properties (with lastmodifieddate as epoch ms), active or archived ones."""
        with self.lock:
            return {c.id: {**c.properties, "lastmodifieddate": c.modified}
                    for c in self._contacts.values() if (c.archived_at is not None) == archived}

    def requests(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log)

    def _stamp(self, at: datetime | int | None) -> int:
        if at is None:
            return self.tick()
        ms = at if isinstance(at, int) else millis(at)
        self._last_ms = max(self._last_ms, ms)
        return ms

    # answering --------------------------------------------------------------------------------
    def answer(self, method: str, path: str, auth: str | None, params: Mapping[str, str],
               body: Any) -> tuple[int, Any, dict[str, str]]:
        if auth != f"Bearer {self.token}":
            return 401, _error("Authentication credentials not found. This API supports OAuth "
                               "2.0 authentication.", "INVALID_AUTHENTICATION"), {}
        search = path.endswith("/search")
        headers = {} if search else {"X-HubSpot-RateLimit-Max": "190",
                                     "X-HubSpot-RateLimit-Remaining": "189",
                                     "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}
        if self._limited:
            policy = self._limited.pop(0)
            word = "daily" if policy == "DAILY" else "secondly"
            return 429, {"status": "error", "message": f"You have reached your {word} limit.",
                         "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
                         "policyName": policy}, headers
        try:
            if path == "/crm/v3/properties/contacts":
                return 200, {"results": [{"name": n, "label": n, "type": "string"}
                                         for n in KNOWN_PROPERTIES]}, headers
            if search:
                return 200, self._search(body), headers
            return 200, self._list(params), headers
        except _BadRequest as exc:
            return exc.status, _error(str(exc), "VALIDATION_ERROR"), headers

    def _list(self, params: Mapping[str, str]) -> dict[str, Any]:
        limit = _int(params.get("limit", "10"), "limit")
        if not 1 <= limit <= 100:
            raise _BadRequest("limit must be between 1 and 100")
        after = _int(params.get("after", "0"), "after")
        archived = params.get("archived", "false").lower() == "true"
        names = _names(params.get("properties"))
        ids = self._in_id_order(archived)
        start = bisect.bisect_left(ids, after)
        page = ids[start:start + limit]
        body: dict[str, Any] = {"results": [self._contacts[i].to_json(names) for i in page]}
        if start + limit < len(ids):
            following = ids[start + limit]
            body["paging"] = {"next": {"after": str(following), "link": f"?after={following}"}}
        return body

    def _in_id_order(self, archived: bool) -> list[int]:
        """Active (or archived) ids in order, cached until a contact is added or archived."""
        if archived not in self._id_order:
            self._id_order[archived] = sorted(
                c.id for c in self._contacts.values() if (c.archived_at is not None) == archived)
        return self._id_order[archived]

    def _search(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _BadRequest("Invalid input JSON: the body must be an object")
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= 200:
            raise _BadRequest("limit must be between 1 and 200")
        after = _int(str(body.get("after", "0") or "0"), "after")
        if after + limit > SEARCH_CAP:
            raise _BadRequest(f"There was a problem with the request: paging past {SEARCH_CAP} "
                              "results is not supported")
        sorts = body.get("sorts") or []
        if len(sorts) > 1:
            raise _BadRequest("Only one sort is allowed per search request")
        matches = [c for c in self._contacts.values()
                   if c.archived_at is None and c.id not in self._unindexed
                   and _matches(c, body.get("filterGroups") or [])]
        if sorts:
            name = str(sorts[0].get("propertyName"))
            descending = str(sorts[0].get("direction", "ASCENDING")).upper() == "DESCENDING"
            self._random.shuffle(matches)  # ties come in no promised order
            matches.sort(key=lambda c: _sortable(c.value(name)), reverse=descending)
        else:
            matches.sort(key=lambda c: c.id)
        names = _names(",".join(body.get("properties") or []) or None)
        page = matches[after:after + limit]
        answer: dict[str, Any] = {"total": len(matches),
                                  "results": [c.to_json(names) for c in page]}
        if after + limit < len(matches):
            answer["paging"] = {"next": {"after": str(after + limit)}}
        return answer

    def log(self, entry: LoggedRequest) -> None:
        with self.lock:
            self._log.append(entry)


def _error(message: str, category: str) -> dict[str, Any]:
    return {"status": "error", "message": message, "correlationId": str(uuid.uuid4()),
            "category": category}


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise _BadRequest(f"{name} must be an integer, not {value!r}") from exc


def _names(properties: str | None) -> tuple[str, ...]:
    if not properties:
        return DEFAULT_PROPERTIES
    asked = tuple(p for p in properties.split(",") if p)
    return tuple(dict.fromkeys((*asked, "createdate", "hs_object_id", "lastmodifieddate")))


def _sortable(value: Any) -> tuple[int, Any]:
    if value is None:
        return (1, "")
    return (0, value) if isinstance(value, int) else (0, str(value))


def _matches(contact: _Contact, groups: list[Any]) -> bool:
    if len(groups) > 5:
        raise _BadRequest("at most 5 filterGroups are allowed")
    if not groups:
        return True
    for group in groups:
        filters = group.get("filters") or [] if isinstance(group, dict) else []
        if len(filters) > 6:
            raise _BadRequest("at most 6 filters are allowed in a filterGroup")
        if all(_test(contact, f) for f in filters):
            return True
    return False


def _test(contact: _Contact, rule: Any) -> bool:
    if not isinstance(rule, dict) or rule.get("operator") not in _OPERATORS:
        raise _BadRequest(f"unknown filter {rule!r}")
    name, op = str(rule.get("propertyName")), str(rule["operator"])
    actual = contact.value(name)
    if op == "HAS_PROPERTY":
        return actual not in (None, "")
    if op == "NOT_HAS_PROPERTY":
        return actual in (None, "")
    if op in ("IN", "NOT_IN"):
        values = {_typed(name, v) for v in rule.get("values") or []}
        return (_comparable(name, actual) in values) == (op == "IN")
    if actual is None:
        return op == "NEQ"
    value, mine = _typed(name, rule.get("value")), _comparable(name, actual)
    try:
        return bool(_COMPARE[op](mine, value))
    except TypeError as exc:
        raise _BadRequest(f"cannot compare {name} with {value!r}") from exc


def _typed(name: str, value: Any) -> Any:
    if name in _TIME_PROPERTIES or name == "hs_object_id":
        text = str(value)
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            return millis(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError as exc:
            raise _BadRequest(f"{name}: {value!r} is not a number or a date") from exc
    return None if value is None else str(value).lower()


def _comparable(name: str, actual: Any) -> Any:
    return actual if isinstance(actual, int) else str(actual).lower()


def _build_app(double: HubSpotDouble) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        body: Any = None
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = None
        with double.lock:
            status, answer, headers = double.answer(
                request.method, request.url.path, request.headers.get("authorization"),
                dict(request.query_params), body)
            double.log(LoggedRequest(request.method, request.url.path, status, body))
        return JSONResponse(answer, status_code=status, headers=headers)

    return Starlette(routes=[
        Route("/crm/v3/objects/contacts", endpoint, methods=["GET"]),
        Route("/crm/v3/objects/contacts/search", endpoint, methods=["POST"]),
        Route("/crm/v3/properties/contacts", endpoint, methods=["GET"]),
    ])
