"""What Mailtrap's answers mean: the one place that decides which HTTP statuses are retriable,
and how answer bodies become values (imports, lists, per-contact 422 errors).

429 → ``MailtrapRateLimited`` (with ``Retry-After``, seconds or an HTTP date, capped at
``MAX_RETRY_AFTER``); 408 and 5xx → ``MailtrapRetriable``; 401/403 → ``MailtrapAuthError``; 404 →
``MailtrapNotFound``; 422 → ``MailtrapValidationError`` with the contacts it names; anything else
→ ``MailtrapUnexpectedAnswer``. Nothing here does I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from sync_service.errors import (
    MailtrapAuthError,
    MailtrapNotFound,
    MailtrapRateLimited,
    MailtrapRetriable,
    MailtrapUnexpectedAnswer,
    MailtrapValidationError,
)
from sync_service.models import ImportResult

IMPORT_STATUSES = ("created", "started", "finished", "failed")
MAX_RETRY_AFTER = 120.0  # seconds; no window of Mailtrap's is longer than 60 s


def raise_for(method: str, url: str, response: httpx.Response) -> Any:
    """The one place that decides what an HTTP status means (and what is retriable)."""
    status = response.status_code
    try:
        body: Any = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = response.text[:500]
    if 200 <= status < 300:
        if isinstance(body, str):
            raise MailtrapUnexpectedAnswer(f"{method} {url}: answer is not JSON", status=status,
                                           body=body)
        return body
    where = f"{method} {url} → {status}"
    if status == 429:
        raise MailtrapRateLimited(f"{where}: rate limited", body=body,
                                  retry_after=_retry_after(response))
    if status >= 500 or status == 408:
        raise MailtrapRetriable(f"{where}: {_message(body)}", status=status, body=body)
    if status in (401, 403):
        raise MailtrapAuthError(f"{where}: Mailtrap refused the API token ({_message(body)})",
                                status=status, body=body)
    if status == 404:
        raise MailtrapNotFound(f"{where}: {_message(body)}", status=status, body=body)
    if status == 422:
        errors = _contact_errors(body)
        raise MailtrapValidationError(f"{where}: {_message(body)}", body=body,
                                      contact_errors=errors)
    raise MailtrapUnexpectedAnswer(f"{where}: {_message(body)}", status=status, body=body)


def _message(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("errors", "error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return str(body)[:300]


def _contact_errors(body: Any) -> dict[str, list[str]]:
    """``{"errors": [{"email": e, "errors": {attr: [msg]}}]}`` → {email: ["attr: msg", ...]}."""
    found: dict[str, list[str]] = {}
    items = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return found
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("email"), str):
            continue
        raw = item.get("errors")
        reasons: dict[str, Any] = raw if isinstance(raw, dict) else {}
        messages = [f"{attr}: {msg}" for attr, msgs in reasons.items()
                    for msg in (msgs if isinstance(msgs, list) else [msgs])]
        found.setdefault(item["email"].strip().lower(), []).extend(messages or ["rejected"])
    return found


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), capped; else None."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def items(data: Any, what: str) -> list[dict[str, Any]]:
    """A JSON array of objects (a listing), or MailtrapUnexpectedAnswer."""
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise MailtrapUnexpectedAnswer(f"unexpected answer listing {what}", body=data)
    return data


def as_object(data: Any, what: str) -> dict[str, Any]:
    """A JSON object, or MailtrapUnexpectedAnswer."""
    if not isinstance(data, dict):
        raise MailtrapUnexpectedAnswer(f"unexpected answer for {what}", body=data)
    return data


def import_result(data: Any) -> ImportResult:
    """An import's id, status and (once finished) counts, or MailtrapUnexpectedAnswer."""
    body = as_object(data, "import")
    status, ident = body.get("status"), body.get("id")
    if not isinstance(ident, int) or status not in IMPORT_STATUSES:
        raise MailtrapUnexpectedAnswer(f"unexpected import answer: {str(body)[:200]}", body=body)
    counts = {k: body.get(k) for k in ("created_contacts_count", "updated_contacts_count",
                                        "contacts_over_limit_count")}
    return ImportResult(ident, str(status), **{k: v if isinstance(v, int) else None
                                               for k, v in counts.items()})
