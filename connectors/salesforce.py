"""The Salesforce connector (``connector = "salesforce"``): Contacts or Leads through SOQL.

Contract (``SalesforceSettings`` has the keys; docs/connector-salesforce.md the vendor facts):

- **Order and watermark.** One ``queryAll`` per read: ``SELECT Id, SystemModstamp, IsDeleted,
  <fields> FROM <object> WHERE (SystemModstamp > :c OR (SystemModstamp = :c AND Id > :k))
  ORDER BY SystemModstamp, Id``, pages followed through ``nextRecordsUrl`` (a server-side cursor:
  no result cap, no OFFSET). The watermark is ``Position(SystemModstamp as an aware UTC datetime,
  Id)``; thousands of records sharing one SystemModstamp are read once each, and a resumed read
  starts right after the last (cursor, key) seen. Records at or before ``since`` are dropped
  client-side as well, so the order handed on is strict whatever the server does with
  sub-second stamps.
- **Deletions.** ``queryAll`` returns records in the recycle bin with ``IsDeleted = true``; they
  are yielded with ``deleted=True``. A record purged from the recycle bin before the next run is
  never seen (Salesforce keeps them about 15 days): run more often than that.
- **Tokens.** The client-credentials or JWT-bearer flow (``salesforce_auth``). A 401
  ``INVALID_SESSION_ID`` mid-read fetches a new token and repeats the same request, so the read
  goes on from the page it was on. A query locator Salesforce no longer knows
  (``INVALID_QUERY_LOCATOR``) restarts the query after the last record yielded.
- **Limits.** 403 ``REQUEST_LIMIT_EXCEEDED`` (Salesforce has no 429) is a rate limit: backed off
  exponentially and retried by the shared HTTP toolkit; 5xx and dropped connections likewise.
  The last ``Sforce-Limit-Info`` (``api-usage=USED/MAX``) is kept in ``api_usage``, shown by
  ``check`` (``describe()``), and a warning ``salesforce.api_usage_high`` is logged once when
  90 % of the org's daily requests are used.
- **Errors.** ``INVALID_FIELD``, ``MALFORMED_QUERY`` and ``INVALID_TYPE`` (a field or object
  name Salesforce does not know, a bad ``where``) are ``ConfigError``s quoting Salesforce's
  message. Other refusals are ``ApiError`` (a ``SourceError``).
- **Values.** A record's values are the queried fields under their API names (as Salesforce
  spells them), ``attributes`` removed; the key is ``Id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import structlog

from sync_service.errors import ApiError, ConfigError, SourceError
from sync_service.httpkit import Answer, ApiPolicy, JsonClient, Verdict
from sync_service.models import Position, SourceRecord

from .salesforce_auth import Session, TokenSource
from .salesforce_settings import SalesforceSettings

__all__ = ["SalesforceConnector", "SalesforceSettings"]

log = structlog.get_logger(__name__)

_QUERY_ERRORS = frozenset({"INVALID_FIELD", "MALFORMED_QUERY", "INVALID_TYPE"})
_ID = re.compile(r"^[A-Za-z0-9]{1,18}$")  # Ids are 15 or 18; nothing else is ever quoted
_USAGE = re.compile(r"api-usage=(?P<used>\d+)/(?P<max>\d+)")
_USAGE_WARNING = 0.9  # share of the org's daily API requests that earns a warning
_FETCH_CHUNK = 200  # ids per IN list: keeps the query URL far below Salesforce's limits


def error_code(body: Any) -> str | None:
    """The ``errorCode`` of Salesforce's error array (or object), if any."""
    first = body[0] if isinstance(body, list) and body else body
    code = first.get("errorCode") if isinstance(first, dict) else None
    return code if isinstance(code, str) else None


@dataclass(frozen=True)
class SalesforcePolicy(ApiPolicy):
    """401 INVALID_SESSION_ID: token expired; 403 REQUEST_LIMIT_EXCEEDED: rate limited."""

    def verdict(self, status: int, body: Any, response: httpx.Response) -> Verdict:
        code = error_code(body)
        if status == 401:
            return Verdict.TOKEN_EXPIRED
        if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
            return Verdict.RATE_LIMITED
        return super().verdict(status, body, response)


def parse_stamp(value: Any) -> datetime:
    """Salesforce's ``2026-01-02T03:04:05.000+0000`` as an aware UTC datetime."""
    text = str(value)
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def soql_datetime(value: datetime) -> str:
    """A SOQL dateTime literal, to the second (a sub-second part is handled client-side)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def soql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class SalesforceConnector:
    """Reads Contacts or Leads from one Salesforce org; see the module docstring."""

    settings_model: ClassVar[type[SalesforceSettings]] = SalesforceSettings

    def __init__(self, settings: SalesforceSettings, *,
                 transport: httpx.BaseTransport | None = None,
                 retry_initial: float = 0.5) -> None:
        self.settings = settings
        self.api_usage: str | None = None
        self._transport = transport
        self._retry_initial = retry_initial
        self._tokens = TokenSource(settings, transport=transport)
        self._client: JsonClient | None = None
        self._restart = False  # set when a query locator expired mid-read
        self._usage_warned = False
        self._base = f"/services/data/v{settings.api_version}"

    # the protocol ---------------------------------------------------------------------------
    def check(self) -> None:
        """Fetch a token, run the configured query for one record, and note the API usage."""
        self._query_answer(self._soql(None, limit=1), verb="query")
        log.info("salesforce.check_ok", object=self.settings.object,
                 fields=len(self.settings.fields), api_usage=self.api_usage)

    def describe(self) -> str:
        """One line for ``check``: the object and Salesforce's API usage."""
        return f"Salesforce {self.settings.object}, {self.api_usage or 'api-usage unknown'}"

    def read(self, since: Position | None) -> Iterator[SourceRecord]:
        """Records after ``since`` (all when None) in (SystemModstamp, Id) order, deletions too."""
        after = self._typed(since)
        start = None  # with a lookback, the first query starts that far before the watermark
        if after is not None and self.settings.lookback:
            start, after = after.cursor - self.settings.lookback, None
        count = 0
        log.info("salesforce.read_started", object=self.settings.object,
                 since_cursor=None if since is None else str(since.cursor))
        while True:
            self._restart = False
            for record in self._records(self._soql(after, start=start)):
                if after is not None and (record.cursor, record.key) <= (after.cursor,
                                                                        after.key):
                    continue
                after, start = record.position, None
                count += 1
                yield record
            if not self._restart:
                break
            log.warning("salesforce.query_restarted", object=self.settings.object,
                        after_cursor=None if after is None else after.cursor.isoformat())
        log.info("salesforce.read_finished", object=self.settings.object, records=count,
                 api_usage=self.api_usage)

    def fetch(self, keys: Sequence[str]) -> Iterator[SourceRecord]:
        """The current records (deleted ones included) for these Ids; unknown Ids are skipped."""
        ids = list(dict.fromkeys(k for k in keys if _ID.match(k)))
        for start in range(0, len(ids), _FETCH_CHUNK):
            chunk = ", ".join(soql_string(i) for i in ids[start:start + _FETCH_CHUNK])
            soql = (f"SELECT {', '.join(self.settings.select_fields())} FROM "
                    f"{self.settings.object} WHERE Id IN ({chunk}) ORDER BY Id")
            self._restart = False
            yield from self._records(soql)
            if self._restart:
                raise SourceError("Salesforce forgot the query locator while re-reading records "
                                  "by Id (INVALID_QUERY_LOCATOR); run it again")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._tokens.close()

    # reading ---------------------------------------------------------------------------------
    def _records(self, soql: str) -> Iterator[SourceRecord]:
        """Every record of ``soql`` through queryAll, page after page."""
        answer = self._query_answer(soql, verb="queryAll")
        while True:
            body = answer.body if isinstance(answer.body, dict) else {}
            for raw in body.get("records") or []:
                yield self._record(raw)
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not next_url:
                return
            try:
                answer = self._get(str(next_url), params=None)
            except ApiError as exc:
                if error_code(exc.body) != "INVALID_QUERY_LOCATOR":
                    raise
                self._restart = True  # read() re-queries after the last record yielded
                return

    def _record(self, raw: Any) -> SourceRecord:
        if not isinstance(raw, dict) or "Id" not in raw or "SystemModstamp" not in raw:
            raise SourceError(f"Salesforce {self.settings.object}: a record without Id or "
                              f"SystemModstamp in the query answer: {str(raw)[:200]}")
        values = {k: v for k, v in raw.items() if k != "attributes"}
        try:
            stamp = parse_stamp(raw["SystemModstamp"])
        except ValueError as exc:
            raise SourceError(f"Salesforce {self.settings.object} {raw['Id']}: SystemModstamp "
                              f"{raw['SystemModstamp']!r} is not a dateTime") from exc
        return SourceRecord(key=str(raw["Id"]), cursor=stamp, values=values,
                            deleted=bool(raw.get("IsDeleted")))

    def _soql(self, after: Position | None, *, start: datetime | None = None,
              limit: int | None = None) -> str:
        settings = self.settings
        conditions = [f"({settings.where})"] if settings.where else []
        if start is not None:
            conditions.append(f"SystemModstamp >= {soql_datetime(start)}")
        elif after is not None:
            stamp = soql_datetime(after.cursor)
            conditions.append(f"(SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND "
                              f"Id > {soql_string(str(after.key))}))")
        soql = f"SELECT {', '.join(settings.select_fields())} FROM {settings.object}"
        if conditions:
            soql += " WHERE " + " AND ".join(conditions)
        soql += " ORDER BY SystemModstamp, Id"
        return soql + (f" LIMIT {limit}" if limit else "")

    def _query_answer(self, soql: str, *, verb: str) -> Answer:
        try:
            return self._get(f"{self._base}/{verb}", params={"q": soql})
        except ApiError as exc:
            code = error_code(exc.body)
            if code in _QUERY_ERRORS:
                message = exc.body[0].get("message", "") if isinstance(exc.body, list) else ""
                raise ConfigError(
                    f"source: Salesforce refused the query on {self.settings.object} ({code}): "
                    f"{str(message).strip()}") from exc
            raise

    def _get(self, url: str, *, params: dict[str, str] | None) -> Answer:
        answer = self._http().exchange(
            "GET", url, params=params, group="salesforce.query",
            headers={"Sforce-Query-Options": f"batchSize={self.settings.page_size}"})
        usage = answer.headers.get("Sforce-Limit-Info")
        if usage:
            self.api_usage = usage
            self._watch_usage(usage)
        return answer

    def _watch_usage(self, usage: str) -> None:
        """Warn once per connector when the org has used 90 % of its daily API requests."""
        match = _USAGE.search(usage)
        if self._usage_warned or match is None or int(match["max"]) <= 0:
            return
        used, most = int(match["used"]), int(match["max"])
        if used >= _USAGE_WARNING * most:
            self._usage_warned = True
            log.warning("salesforce.api_usage_high", used=used, max=most,
                        object=self.settings.object)

    def _http(self) -> JsonClient:
        if self._client is None:
            session = self._tokens.fetch()
            self._client = JsonClient(
                policy=SalesforcePolicy(api="Salesforce", config_key="source.api_url",
                                        retry_event="salesforce.retry"),
                base_url=self.settings.api_url or session.instance_url,
                headers=_auth(session), transport=self._transport,
                timeout=self.settings.timeout, max_retries=self.settings.max_retries,
                retry_initial=self._retry_initial, refresh=lambda: _auth(self._tokens.fetch()),
            )
        return self._client

    def _typed(self, since: Position | None) -> Position | None:
        if since is None:
            return None
        cursor = since.cursor
        try:
            if isinstance(cursor, str):
                cursor = parse_stamp(cursor)
            if not isinstance(cursor, datetime):
                raise TypeError(f"a {type(cursor).__name__}")
        except (ValueError, TypeError) as exc:
            raise SourceError(
                f"the watermark cursor {since.cursor!r} is not a SystemModstamp ({exc}); a full "
                "re-read (backfill) starts over") from exc
        if cursor.tzinfo is None:
            cursor = cursor.replace(tzinfo=UTC)
        return Position(cursor.astimezone(UTC), str(since.key))


def _auth(session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {session.access_token}"}
