"""The Pipedrive connector (``connector = "pipedrive"``): persons through API v2.

Contract (``PipedriveSettings`` has the keys; docs/connector-pipedrive.md the vendor facts):

- **Order and watermark.** ``GET /api/v2/persons?sort_by=update_time&sort_direction=asc
  &updated_since=<watermark>&limit=500`` followed page by page through ``next_cursor``. The
  watermark is ``Position(update_time as an aware UTC datetime, person id)``. ``updated_since``
  is inclusive and Pipedrive promises no order among persons sharing an ``update_time`` (stamps
  are whole seconds, so ties are common): the persons of one ``update_time`` are gathered and
  yielded by id, and those at or before the watermark are dropped. Memory is bounded by a page
  plus the largest group of persons sharing one second.
- **Email.** ``email`` is the primary address of ``emails`` (the first one flagged
  ``primary``; else the first address; else None).
- **Custom fields by name.** Configured names are resolved to Pipedrive's hash keys through
  ``GET /api/v2/personFields``; option fields (enum, set) give their labels, not option ids.
- **Deletions.** The v2 list does not show deleted persons. With ``deletions`` (default on), an
  incremental read also asks ``GET /v1/recents?items=person&since_timestamp=`` for persons
  changed since one second before the watermark, and yields those whose ``active_flag`` is false
  as ``deleted=True``, merged into the stream in (update_time, id) order. Memory grows with the
  number of deletions since the last run. A full read (first run, backfill) yields no deletions.
- **Limits and errors.** Requests are paced under ``rate`` (Pipedrive's burst limit per
  2-second window, shared by every connector of the process using the same token); 429 (with
  ``Retry-After``), 5xx, timeouts and dropped connections are retried by the shared HTTP
  toolkit. A refused token (401) is a ``ConfigError`` naming
  ``token``; other refusals are ``ApiError`` with Pipedrive's ``error`` text.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
import structlog

from sync_service.errors import ApiAuthError, ConfigError, SourceError
from sync_service.httpkit import ApiPolicy, JsonClient, RatePacer, digest
from sync_service.models import Position, SourceRecord

from .pipedrive_settings import PipedriveSettings

__all__ = ["PipedriveConnector", "PipedriveSettings"]

log = structlog.get_logger(__name__)

_IDS_PER_REQUEST = 100  # GET /api/v2/persons?ids= takes at most 100
_CUSTOM_KEYS_MAX = 15  # custom_fields= takes at most 15 keys
_HASH = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class PipedrivePolicy(ApiPolicy):
    """Pipedrive's words are in ``error``; ``error_info`` only points at the docs."""

    def message(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
        return super().message(body)


@dataclass(frozen=True)
class _Field:
    name: str  # as configured: the record's column
    code: str  # the person's key, or a custom field's hash
    custom: bool
    options: Mapping[Any, str]  # option id -> label, for enum and set fields


def primary_email(emails: Any) -> str | None:
    """The primary address of a v2 ``emails`` array (or v1 ``email``); else the first one."""
    if not isinstance(emails, list):
        return emails if isinstance(emails, str) and emails else None
    entries = [e for e in emails if isinstance(e, dict) and e.get("value")]
    chosen = next((e for e in entries if e.get("primary") is True), entries[0] if entries else None)
    return str(chosen["value"]) if chosen else None


def parse_time(value: Any) -> datetime:
    """RFC 3339 (v2) or ``YYYY-MM-DD HH:MM:SS`` UTC (v1) as an aware UTC datetime."""
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


class PipedriveConnector:
    """Reads persons from one Pipedrive company; see the module docstring."""

    settings_model: ClassVar[type[PipedriveSettings]] = PipedriveSettings

    def __init__(self, settings: PipedriveSettings, *,
                 transport: httpx.BaseTransport | None = None,
                 retry_initial: float = 0.5) -> None:
        self.settings = settings
        self._http = JsonClient(
            policy=PipedrivePolicy(api="Pipedrive", config_key="source.api_url",
                                   retry_event="pipedrive.retry"),
            base_url=settings.api_url, headers={"x-api-token": settings.token},
            pacer=RatePacer("pipedrive", digest(settings.token), [settings.rate]),
            transport=transport, timeout=settings.timeout, max_retries=settings.max_retries,
            retry_initial=retry_initial,
        )
        self._fields: list[_Field] | None = None

    # the protocol ---------------------------------------------------------------------------
    def check(self) -> None:
        """Resolve the configured fields and read one person."""
        self._fields = None
        fields = self._resolved()
        self._get("/api/v2/persons", {"limit": 1})
        log.info("pipedrive.check_ok", fields=len(fields),
                 custom=sum(1 for f in fields if f.custom))

    def describe(self) -> str:
        fields = self._resolved()
        custom = [f"{f.name!r}" for f in fields if f.custom]
        return "Pipedrive persons" + (f"; custom fields {', '.join(custom)}" if custom else "")

    def read(self, since: Position | None) -> Iterator[SourceRecord]:
        """Persons after ``since`` (all when None) in (update_time, id) order, deletions too."""
        after = self._typed(since)
        fields = self._resolved()
        params: dict[str, Any] = {"sort_by": "update_time", "sort_direction": "asc"}
        deleted: Iterable[SourceRecord] = ()
        if after is not None:
            start = after.cursor - self.settings.lookback
            params["updated_since"] = _rfc3339(start)
            if self.settings.deletions:
                deleted = self._deletions(start - timedelta(seconds=1), fields)
            if self.settings.lookback:
                after = None  # re-read the whole window; the diff skips what is unchanged
        persons = self._by_time(self._pages(params, fields), fields)
        count = 0
        log.info("pipedrive.read_started",
                 since_cursor=None if since is None else str(since.cursor))
        for record in heapq.merge(persons, deleted, key=lambda r: (r.cursor, r.key)):
            if after is not None and (record.cursor, record.key) <= (after.cursor, after.key):
                continue
            after = record.position
            count += 1
            yield record
        log.info("pipedrive.read_finished", records=count)

    def fetch(self, keys: Sequence[str]) -> Iterator[SourceRecord]:
        """The current persons for these ids; unknown or deleted ones are skipped."""
        fields = self._resolved()
        ids = list(dict.fromkeys(k.strip() for k in keys if k.strip().isdigit()))
        for start in range(0, len(ids), _IDS_PER_REQUEST):
            params = {"ids": ",".join(ids[start:start + _IDS_PER_REQUEST])}
            yield from self._pages(params, fields)

    def close(self) -> None:
        self._http.close()

    # reading ---------------------------------------------------------------------------------
    def _pages(self, params: Mapping[str, Any], fields: list[_Field]) -> Iterator[SourceRecord]:
        query = {**params, "limit": self.settings.page_size}
        custom = [f.code for f in fields if f.custom]
        if custom and len(custom) <= _CUSTOM_KEYS_MAX:
            query["custom_fields"] = ",".join(custom)
        while True:
            body = self._get("/api/v2/persons", query)
            for person in _data(body, "persons"):
                yield self._record(person, fields)
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    def _by_time(self, records: Iterator[SourceRecord], fields: list[_Field]
                 ) -> Iterator[SourceRecord]:
        """Regroup persons sharing one update_time by id (the API promises no order there)."""
        group: list[SourceRecord] = []
        for record in records:
            if group and record.cursor != group[0].cursor:
                if record.cursor < group[0].cursor:
                    raise SourceError(
                        f"Pipedrive listed person {record.key} (update_time "
                        f"{record.cursor.isoformat()}) after persons updated at "
                        f"{group[0].cursor.isoformat()}: the list is not in update_time order")
                yield from sorted(group, key=lambda r: r.key)
                group = []
            group.append(record)
        yield from sorted(group, key=lambda r: r.key)

    def _deletions(self, start: datetime, fields: list[_Field]) -> list[SourceRecord]:
        found: dict[int, SourceRecord] = {}
        params: dict[str, Any] = {"items": "person", "limit": 500, "start": 0,
                                  "since_timestamp": start.strftime("%Y-%m-%d %H:%M:%S")}
        while True:
            body = self._get("/v1/recents", params)
            for item in _data(body, "recents"):
                data = item.get("data") if isinstance(item, dict) else None
                if item.get("item") != "person" or not isinstance(data, dict):
                    continue
                if data.get("active_flag") is False and data.get("update_time"):
                    record = self._deleted(data, fields)
                    found[record.key] = record
            pagination = (body.get("additional_data") or {}).get("pagination") or {}
            if not pagination.get("more_items_in_collection"):
                break
            params["start"] = pagination.get("next_start", params["start"] + params["limit"])
        log.info("pipedrive.deletions_found", count=len(found))
        return sorted(found.values(), key=lambda r: (r.cursor, r.key))

    def _record(self, person: Any, fields: list[_Field]) -> SourceRecord:
        if not isinstance(person, dict) or "id" not in person or not person.get("update_time"):
            raise SourceError(f"Pipedrive: a person without id or update_time: "
                              f"{str(person)[:200]}")
        custom = person.get("custom_fields") or {}
        values: dict[str, Any] = {"id": person["id"], "email": primary_email(person.get("emails")),
                                  "update_time": person["update_time"]}
        for field in fields:
            raw = custom.get(field.code) if field.custom else person.get(field.code)
            values[field.name] = _label(raw, field.options)
        return SourceRecord(key=int(person["id"]), cursor=self._time(person), values=values)

    def _deleted(self, data: Mapping[str, Any], fields: list[_Field]) -> SourceRecord:
        values: dict[str, Any] = {"id": data["id"], "email": primary_email(data.get("email")),
                                  "update_time": data["update_time"]}
        values.update({f.name: None for f in fields})
        return SourceRecord(key=int(data["id"]), cursor=self._time(data), values=values,
                            deleted=True)

    def _time(self, person: Mapping[str, Any]) -> datetime:
        try:
            return parse_time(person["update_time"])
        except ValueError as exc:
            raise SourceError(f"Pipedrive person {person.get('id')}: update_time "
                              f"{person['update_time']!r} is not a time") from exc

    # fields ----------------------------------------------------------------------------------
    def _resolved(self) -> list[_Field]:
        if self._fields is None:
            self._fields = self._resolve(self._field_list())
        return self._fields

    def _field_list(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 500}
        while True:
            body = self._get("/api/v2/personFields", params)
            found.extend(f for f in _data(body, "person fields") if isinstance(f, dict))
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return found
            params["cursor"] = cursor

    def _resolve(self, known: list[dict[str, Any]]) -> list[_Field]:
        standard = {str(f.get("field_code")) for f in known if not f.get("is_custom_field")}
        custom = [f for f in known if f.get("is_custom_field")]
        resolved: list[_Field] = []
        for name in self.settings.fields:
            if name in standard:
                resolved.append(_Field(name, name, custom=False, options={}))
                continue
            match = ([f for f in custom if f.get("field_name") == name]
                     or [f for f in custom if str(f.get("field_name", "")).casefold()
                         == name.casefold()]
                     or [f for f in custom if _HASH.match(name) and f.get("field_code") == name])
            if len(match) != 1:
                names = ", ".join(repr(str(f.get("field_name"))) for f in custom) or "none"
                problem = "matches several custom fields" if match else "is no person field"
                raise ConfigError(
                    f"source.fields: {name!r} {problem} in Pipedrive (custom person fields: "
                    f"{names}; standard keys such as first_name, last_name, name, org_id)")
            options = {o.get("id"): str(o.get("label")) for o in match[0].get("options") or []
                       if isinstance(o, dict)}
            resolved.append(_Field(name, str(match[0]["field_code"]), custom=True,
                                   options=options))
        return resolved

    # plumbing --------------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            body = self._http.request("GET", path, params=params, group="pipedrive")
        except ApiAuthError as exc:
            raise ConfigError(f"source.token: Pipedrive refused the API token "
                              f"({self._http.policy.message(exc.body)})") from exc
        if not isinstance(body, dict) or body.get("success") is False:
            raise SourceError(f"Pipedrive: GET {path} did not answer success: {str(body)[:200]}")
        return body

    def _typed(self, since: Position | None) -> Position | None:
        if since is None:
            return None
        try:
            cursor = since.cursor if isinstance(since.cursor, datetime) else parse_time(
                since.cursor)
            key = int(since.key)
        except (ValueError, TypeError) as exc:
            raise SourceError(
                f"the watermark ({since.cursor!r}, {since.key!r}) is not a Pipedrive "
                f"(update_time, id) ({exc}); a full re-read (backfill) starts over") from exc
        cursor = cursor if cursor.tzinfo else cursor.replace(tzinfo=UTC)
        return Position(cursor.astimezone(UTC), key)


def _data(body: Mapping[str, Any], what: str) -> list[Any]:
    data = body.get("data")
    if data is None:
        return []
    if not isinstance(data, list):
        raise SourceError(f"Pipedrive: the {what} answer's data is not a list")
    return data


def _label(raw: Any, options: Mapping[Any, str]) -> Any:
    if not options or raw is None:
        return raw
    if isinstance(raw, list):
        return ", ".join(options.get(v, str(v)) for v in raw)
    if isinstance(raw, str) and "," in raw:  # a set field may come as "1,3"
        return ", ".join(options.get(int(v) if v.isdigit() else v, v) for v in raw.split(","))
    return options.get(raw, raw)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
