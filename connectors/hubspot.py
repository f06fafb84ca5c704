"""The HubSpot connector (``connector = "hubspot"``): CRM v3 contacts with chosen properties.

Contract (see ``HubSpotSettings`` for the keys, docs/connectors.md for the API facts):

- **Records.** ``key`` is the contact id (an int); ``values`` hold the configured
  ``properties`` (strings, as HubSpot sends them; None when unset) plus ``id``. ``email`` is the
  primary address (HubSpot keeps others in ``hs_additional_emails``).
- **Cursor** ``(moment, phase)``: a UTC datetime and 0 for the full-read phase, 1 for changes.
- **Full read** (``read(None)``, first run, backfill) through the list endpoint (no result cap,
  the higher rate limit), active and archived contacts merged in id order, each with cursor
  ``(L, 0)`` where ``L`` is the moment the read started; then the changes after ``L`` (below),
  so that edits made while listing are read there, once and in order (the listing leaves out
  contacts stamped after ``L``). A watermark inside the list phase resumes the listing after
  its id, unless search says that no contact past that id is left to list (asked once ``L``
  is older than ``lookback``; a listing that ended is not repeated).
- **Changes** after a position, through the search API filtered and sorted (one rule) on
  ``lastmodifieddate``. Each query asks for the first page only, from the last value read, so
  the 10,000-results cap is never reached and an edit during the read cannot shift a page.
  Records tied on one value come in no promised order, so a value is only yielded once all of
  its records are on the page; a page filled by one value is read with a query of its own
  (``EQ`` on the value, sorted by ``hs_object_id``, paging on ``GT`` the last id). Archived
  contacts (deletions) come from the list endpoint (``archived=true``, with ``archivedAt``);
  those archived after the position are merged into the stream as ``deleted`` records with
  cursor ``(archivedAt, 1)``. With ``lookback`` L > 0, a read resumes L before the watermark
  (search takes a few moments to index an edit); re-read records are skipped downstream.
- **Limits.** Requests are paced under ``search_rate`` (search) and ``rate`` (everything else);
  a 429 with policyName ``TEN_SECONDLY_ROLLING``/``SECONDLY`` backs off and resumes, one with
  ``DAILY`` ends the run (``ApiLimitExhausted``, retried by the next scheduled run).
- **Errors.** A refused token or missing scope is a ``ConfigError`` in ``check`` (the CLI exits
  2) naming ``source.token``; an unknown property is a ``ConfigError`` naming it; other
  failures are ``ApiError`` (a ``SourceError``) with HubSpot's message.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import httpx
import structlog
from pydantic import Field, SecretStr, field_validator

from sync_service import httpkit
from sync_service.connector import ConnectorSettings
from sync_service.errors import ApiAuthError, ConfigError
from sync_service.models import Position, SourceRecord
from sync_service.units import parse_duration, parse_rate

__all__ = ["HubSpotConnector", "HubSpotSettings"]

log = structlog.get_logger(__name__)
CURSOR_PROPERTY = "lastmodifieddate"
LIST_PAGE_MAX = 100
SEARCH_PAGE_MAX = 200
IN_VALUES_MAX = 100  # values of one IN filter (fetch)
LIST, CHANGES = 0, 1  # cursor phases


class HubSpotSettings(ConnectorSettings):
    """``[pipelines.source]`` with ``connector = "hubspot"``."""

    connector: Literal["hubspot"] = "hubspot"
    token: SecretStr = Field(description="private app token, from the environment: "
                             "token = \"${HUBSPOT_TOKEN}\" (scope crm.objects.contacts.read)")
    properties: tuple[str, ...] = Field(
        ("email", "firstname", "lastname"),
        description="contact properties to read (internal names); the mapping names them")
    api_url: str = Field("https://api.hubapi.com", description="HubSpot's API (or a proxy)")
    page_size: int = Field(100, ge=1, le=SEARCH_PAGE_MAX,
                           description="records a request (list pages stop at 100)")
    lookback: str = Field("5m", description="how far before the watermark an incremental read "
                          "starts (search indexes an edit after a few moments); 0 to disable")
    rate: str = Field("100/10s", description="pace of list and other requests (HubSpot allows "
                      "100-190 per 10 s by plan)")
    search_rate: str = Field("4/1s", description="pace of search requests (HubSpot: 4/s a token)")
    timeout: float = Field(30.0, gt=0, description="seconds per request")
    max_retries: int = Field(8, ge=0, description="retries of a rate-limited or failed request")
    retry_initial: float = Field(0.5, gt=0, description="first back-off in seconds (doubles)")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty (set it from the environment: \"${HUBSPOT_TOKEN}\")")
        return value

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not p.strip() for p in value):
            raise ValueError("must name at least one property, none empty")
        return value

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("rate", "search_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value


@dataclass(frozen=True)
class HubSpotPolicy(httpkit.ApiPolicy):
    """HubSpot's answers: 429 by policyName, ``{category, message}`` error bodies."""

    api: str = "HubSpot"
    config_key: str = "source.api_url"
    rate_limit_wait: float | None = 1.0  # HubSpot sends no Retry-After on its 429s

    def verdict(self, status: int, body: Any, response: httpx.Response) -> httpkit.Verdict:
        if status == 429 and isinstance(body, dict) and body.get("policyName") == "DAILY":
            return httpkit.Verdict.EXHAUSTED
        return super().verdict(status, body, response)


class _Pacers:
    """One RatePacer for search and one for the rest, chosen by the request's pace key."""

    def __init__(self, token: str, rate: str, search_rate: str) -> None:
        ident = httpkit.digest(token)
        self._by_key = {"search": httpkit.RatePacer("hubspot-search", ident, [search_rate]),
                        "api": httpkit.RatePacer("hubspot", ident, [rate])}

    def acquire(self, key: Any, should_stop: httpkit.StopCheck | None = None, /
                ) -> float | None:
        return self._by_key[key].acquire(key, should_stop)

    def settle(self, key: Any, taken: float, should_stop: httpkit.StopCheck | None = None, /
               ) -> None:
        self._by_key[key].settle(key, taken, should_stop)


class HubSpotConnector:
    """Reads HubSpot contacts; see the module docstring."""

    settings_model: ClassVar[type[HubSpotSettings]] = HubSpotSettings

    def __init__(self, settings: HubSpotSettings, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        token = settings.token.get_secret_value().strip()
        self._lookback = timedelta(seconds=parse_duration(settings.lookback))
        self._names = tuple(dict.fromkeys((*settings.properties, CURSOR_PROPERTY)))
        self._api = httpkit.JsonClient(
            policy=HubSpotPolicy(), base_url=settings.api_url.rstrip("/"), transport=transport,
            headers={"Authorization": f"Bearer {token}"}, timeout=settings.timeout,
            pacer=_Pacers(token, settings.rate, settings.search_rate),
            max_retries=settings.max_retries, retry_initial=settings.retry_initial,
        )

    # the protocol ---------------------------------------------------------------------------
    def check(self) -> None:
        """The token reads contacts, and every configured property exists."""
        try:
            self._api.request("GET", "/crm/v3/objects/contacts",
                              params={"limit": 1, "properties": "email"}, pace_key="api")
        except ApiAuthError as exc:
            raise ConfigError(
                f"source.token: HubSpot refused the token ({exc}); it needs a private app "
                "token with the scope crm.objects.contacts.read"
            ) from exc
        try:
            data = self._api.request("GET", "/crm/v3/properties/contacts", pace_key="api")
        except ApiAuthError as exc:  # reading property definitions may need another scope
            log.warning("hubspot.properties_unchecked", error=str(exc))
            return
        known = {str(p.get("name")) for p in _results(data, field="name")}
        unknown = [p for p in self.settings.properties if p not in known]
        if unknown:
            raise ConfigError(
                f"source.properties: HubSpot contacts have no property {', '.join(unknown)} "
                f"(internal names, e.g. {', '.join(sorted(known)[:8])})"
            )
        log.info("hubspot.check_ok", properties=len(self.settings.properties))

    def read(self, since: Position | None) -> Iterator[SourceRecord]:
        """Records after ``since`` in (cursor, key) order; see the module docstring."""
        if since is None or _phase(since) == LIST:
            start = _moment(since) if since is not None else self._now()
            after = int(since.key) if since is not None else None
            if after is None or not self._listing_done(start, after):
                log.info("hubspot.full_read_started", start=start.isoformat(), after_id=after)
                yield from self._listing(start, after)
            yield from self._changes(start, None, inclusive=False)
            return
        moment = _moment(since)
        if self._lookback:
            yield from self._changes(moment - self._lookback, None, inclusive=True)
        else:
            yield from self._changes(moment, int(since.key), inclusive=False)

    def fetch(self, keys: Sequence[str]) -> Iterator[SourceRecord]:
        """The current (active) contacts with these ids; unknown or archived ones are skipped."""
        ids = sorted({int(k) for k in keys if str(k).strip().isdigit()})
        for start in range(0, len(ids), IN_VALUES_MAX):
            chunk = [str(i) for i in ids[start:start + IN_VALUES_MAX]]
            page = self._search([{"propertyName": "hs_object_id", "operator": "IN",
                                  "values": chunk}], "hs_object_id", limit=IN_VALUES_MAX)
            for item in page:
                yield self._record(item, phase=CHANGES)

    def close(self) -> None:
        self._api.close()

    # the full read ----------------------------------------------------------------------------
    def _listing(self, start: datetime, after: int | None) -> Iterator[SourceRecord]:
        """Active and archived contacts merged in id order, all at cursor (start, LIST).

        A contact changed (or archived) after ``start`` is left to the changes that follow, so
        that it is read once, in order.
        """
        streams = [self._list(archived=flag, after=after) for flag in (False, True)]
        previous: int | None = None
        limit = _ms(start)
        for item in heapq.merge(*streams, key=lambda i: int(i["id"])):
            ident = int(item["id"])
            stamp = _parse_ms(item.get("archivedAt")) or _item_ms(item)
            if ident == previous or stamp > limit:
                continue
            previous = ident
            record = self._record(item, phase=LIST)
            yield SourceRecord(record.key, (start, LIST), record.values, record.deleted)

    def _listing_done(self, start: datetime, after: int) -> bool:
        """Whether a listing that reached id ``after`` has nothing left: no active contact past
        it changed before ``start``. Search indexes with a delay, so it is asked only once
        ``start`` is older than ``lookback``; before that the listing resumes."""
        if self._now() - start < self._lookback:
            return False
        rest = self._search([
            {"propertyName": "hs_object_id", "operator": "GT", "value": str(after)},
            {"propertyName": CURSOR_PROPERTY, "operator": "LTE", "value": str(_ms(start))},
        ], "hs_object_id", limit=1)
        return not rest

    def _list(self, *, archived: bool, after: int | None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": min(self.settings.page_size, LIST_PAGE_MAX),
                                  "properties": ",".join(self._names),
                                  "archived": str(archived).lower()}
        token: str | None = None
        while True:
            if token is not None:
                params["after"] = token
            data = self._api.request("GET", "/crm/v3/objects/contacts", params=params,
                                     pace_key="api")
            for item in _results(data):
                if after is None or int(item["id"]) > after:
                    yield item
            token = _next_after(data)
            if token is None:
                return

    # changes ----------------------------------------------------------------------------------
    def _changes(self, moment: datetime, after: int | None, *,
                 inclusive: bool) -> Iterator[SourceRecord]:
        """Edits (search) and deletions (archived) after a position, merged in order."""
        archived = self._archived_since(moment, after, inclusive=inclusive)
        edited = self._edited(moment, after, inclusive=inclusive)
        yield from heapq.merge(edited, archived, key=lambda r: (r.cursor, r.key))

    def _edited(self, moment: datetime, after: int | None, *,
                inclusive: bool) -> Iterator[SourceRecord]:
        limit = self.settings.page_size
        value = _ms(moment)
        if after is not None:
            yield from self._tied(value, after)
        operator = "GTE" if inclusive else "GT"
        while True:
            page = self._search([{"propertyName": CURSOR_PROPERTY, "operator": operator,
                                  "value": str(value)}], CURSOR_PROPERTY, limit=limit)
            groups: dict[int, list[dict[str, Any]]] = {}
            for item in page:
                groups.setdefault(_item_ms(item), []).append(item)
            if not groups:
                return
            last = max(groups)
            full = len(page) == limit
            for stamp in sorted(groups):
                if stamp == last and full:
                    break  # this value may go on past the page: read below
                yield from self._records(groups[stamp])
            if not full:
                return
            if len(groups) == 1:  # a page of one value: read it by id, then go past it
                yield from self._tied(last, None)
                value, operator = last, "GT"
            else:
                value, operator = last, "GTE"

    def _tied(self, value: int, after: int | None) -> Iterator[SourceRecord]:
        """Every contact whose cursor equals ``value`` (ids after ``after``), by id."""
        last = after if after is not None else 0
        while True:
            page = self._search([
                {"propertyName": CURSOR_PROPERTY, "operator": "EQ", "value": str(value)},
                {"propertyName": "hs_object_id", "operator": "GT", "value": str(last)},
            ], "hs_object_id", limit=self.settings.page_size)
            yield from self._records([i for i in page if _item_ms(i) == value])
            if len(page) < self.settings.page_size:
                return
            last = max(int(i["id"]) for i in page)

    def _archived_since(self, moment: datetime, after: int | None, *,
                        inclusive: bool) -> Iterator[SourceRecord]:
        """Contacts archived after the position, as deleted records in order (held in memory:
        HubSpot keeps archived contacts for 90 days, a deletion is a few dozen bytes)."""
        floor = (_ms(moment), after if after is not None else (-1 if inclusive else 1 << 62))
        found = []
        for item in self._list(archived=True, after=None):
            stamp = _parse_ms(item.get("archivedAt")) or _item_ms(item)
            if (stamp, int(item["id"])) > floor:
                found.append((stamp, int(item["id"]), item))
        found.sort(key=lambda t: (t[0], t[1]))
        for stamp, _ident, item in found:
            record = self._record(item, phase=CHANGES)
            yield SourceRecord(record.key, (_datetime(stamp), CHANGES), record.values, True)

    # plumbing ---------------------------------------------------------------------------------
    def _search(self, filters: list[dict[str, Any]], sort: str, *,
                limit: int) -> list[dict[str, Any]]:
        body = {"filterGroups": [{"filters": filters}],
                "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
                "properties": list(self._names), "limit": limit}
        data = self._api.request("POST", "/crm/v3/objects/contacts/search", json=body,
                                 pace_key="search")
        return _results(data)

    def _records(self, items: list[dict[str, Any]]) -> Iterator[SourceRecord]:
        for item in sorted(items, key=lambda i: int(i["id"])):
            yield self._record(item, phase=CHANGES)

    def _record(self, item: dict[str, Any], *, phase: int) -> SourceRecord:
        props = item.get("properties") or {}
        values: dict[str, Any] = {name: props.get(name) for name in self.settings.properties}
        values["id"] = str(item["id"])
        cursor = (_datetime(_item_ms(item)), phase)
        return SourceRecord(int(item["id"]), cursor, values, bool(item.get("archived")))

    def _now(self) -> datetime:
        return datetime.now(UTC)


def _results(data: Any, field: str = "id") -> list[dict[str, Any]]:
    """The ``results`` objects of an answer (those carrying ``field``)."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise ConfigError(f"source.api_url: the answer is not HubSpot's (no results): "
                          f"{str(data)[:200]}")
    return [r for r in results if isinstance(r, dict) and field in r]


def _next_after(data: Any) -> str | None:
    paging = data.get("paging") if isinstance(data, dict) else None
    after = (paging or {}).get("next", {}).get("after") if isinstance(paging, dict) else None
    return str(after) if after is not None else None


def _phase(position: Position) -> int:
    cursor = position.cursor
    if isinstance(cursor, tuple | list) and len(cursor) == 2 and cursor[1] in (LIST, CHANGES):
        return int(cursor[1])
    raise ConfigError(
        f"the watermark {cursor!r} is not a HubSpot position; was the pipeline's connector "
        "changed? a full re-read (backfill) starts over"
    )


def _moment(position: Position) -> datetime:
    moment = position.cursor[0]
    if not isinstance(moment, datetime):
        raise ConfigError(f"the watermark {position.cursor!r} is not a HubSpot position")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ms(moment: datetime) -> int:
    """Epoch milliseconds, rounded down (a read's start never moves past an edit)."""
    return int(moment.timestamp() * 1000) if moment.timestamp() >= 0 else round(
        moment.timestamp() * 1000)


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _parse_ms(text: Any) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return _ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def _item_ms(item: dict[str, Any]) -> int:
    props = item.get("properties") or {}
    found = _parse_ms(props.get(CURSOR_PROPERTY)) or _parse_ms(item.get("updatedAt"))
    if found is None:
        raise ConfigError(f"HubSpot contact {item.get('id')} has no {CURSOR_PROPERTY}")
    return found
