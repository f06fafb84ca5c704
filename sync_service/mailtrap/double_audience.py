"""Custom events and contact exports in the Mailtrap double (consent branch).

- ``POST .../contacts/{id or email}/events`` validates ``{name, params}`` as the spec writes it
  (name a string of at most 255 characters; params an object of scalar values whose keys are at
  most 255 characters), answers 404 when the contact does not exist and 201 with
  ``{contact_id, contact_email, name, params}``; every accepted event is kept in order.
- ``POST .../contacts/exports`` takes ``filters`` (``list_id`` equal [ids]: contacts in any of
  them; ``subscription_status`` equal subscribed|unsubscribed) and answers 201 ``created``; one
  export at a time per account (422 while another is unfinished). Each ``GET`` poll moves it on:
  created → started → finished, as does ``EXPORT_SECONDS`` of the double's clock. When it
  finishes, a snapshot of the matching contacts is written as a gzip CSV and its URL (on the
  double's own host, ``/downloads/exports/<token>.csv.gz``, no API token needed) is reported.
- The CSV: ``id,email,status,list_ids,created_at,updated_at`` then one column per custom field
  (by merge tag); ``list_ids`` joins ids with commas inside one cell; booleans are
  ``true``/``false``; an absent field is an empty cell.

All functions run under the owning double's lock.
"""

from __future__ import annotations

import csv
import gzip
import io
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sync_service.mailtrap.double_model import Account, ApiError, Contact, Json, not_found

EXPORT_SECONDS = 5.0
MAX_NAME = 255
_BUSY = {"errors": {"base": ["There is a previous export initiated. You will be notified by "
                             "email once it is completed."]}}


@dataclass(frozen=True)
class ReceivedEvent:
    """One custom event the double accepted."""

    account_id: int
    email: str
    name: str
    params: dict[str, Json]
    time: float


@dataclass
class ExportJob:
    id: int
    account_id: int
    filters: list[dict[str, Json]]
    created_at: float
    stamp: str
    status: str = "created"
    polls: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(12))
    content: bytes | None = None

    def to_json(self, base_url: str) -> dict[str, Json]:
        # Mailtrap's example shows "url": null before the end, but the spec (OpenAPI 3.1, where
        # "nullable" means nothing) only allows a string: the double leaves the key out.
        body: dict[str, Json] = {"id": self.id, "status": self.status,
                                 "created_at": self.stamp, "updated_at": self.stamp}
        if self.status == "finished":
            body["url"] = f"{base_url.rstrip('/')}/downloads/exports/{self.token}.csv.gz"
        return body


@dataclass
class AudienceState:
    """Events received and exports made, across accounts."""

    events: list[ReceivedEvent] = field(default_factory=list)
    exports: dict[int, ExportJob] = field(default_factory=dict)
    export_seconds: float = EXPORT_SECONDS
    # Exports are written as gzip unless a test asks for plain CSV (a format variation).
    gzip_exports: bool = True


def create_event(state: AudienceState, account: Account, identifier: str, body: Json,
                 now: float) -> dict[str, Json]:
    contact = _find(account, identifier)
    errors = _event_errors(body)
    if errors:
        raise ApiError(422, {"errors": errors})
    if contact is None:
        raise not_found()
    params = dict(body.get("params") or {})
    state.events.append(ReceivedEvent(account.id, contact.email, body["name"], params, now))
    return {"contact_id": contact.id, "contact_email": contact.email, "name": body["name"],
            "params": params}


def _find(account: Account, identifier: str) -> Contact | None:
    if "@" in identifier:
        return account.contacts.get(identifier.lower())
    return account.contact_by_id(identifier)


def _event_errors(body: Json) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not isinstance(body, dict):
        return {"base": ["must be an object"]}
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = ["must be a string"]
    elif len(name) > MAX_NAME:
        errors["name"] = ["is too long"]
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        errors["params"] = ["must be a hash"]
        return errors
    for key, value in params.items():
        if len(key) > MAX_NAME:
            errors.setdefault("params", []).append(f"key '{key[:20]}' is too long")
        if isinstance(value, dict | list):
            errors.setdefault("params", []).append(f"value for '{key}' must be a scalar")
        elif isinstance(value, str) and len(value) > MAX_NAME:
            errors.setdefault("params", []).append(f"value for '{key}' is too long")
    return errors


def create_export(state: AudienceState, account: Account, body: Json, now: float,
                  next_id: int) -> ExportJob:
    settle(state, account, now)
    filters = body.get("filters", []) if isinstance(body, dict) else None
    if not isinstance(filters, list) or not all(_valid_filter(f) for f in filters):
        raise ApiError(422, {"errors": {"filters": "invalid"}})
    if any(job.account_id == account.id and job.status != "finished"
           for job in state.exports.values()):
        raise ApiError(422, _BUSY)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    job = ExportJob(next_id, account.id, filters, now, stamp)
    state.exports[job.id] = job
    return job


def _valid_filter(item: Json) -> bool:
    if not isinstance(item, dict) or item.get("operator") != "equal":
        return False
    if item.get("name") == "list_id":
        value = item.get("value")
        return isinstance(value, list) and all(isinstance(v, int) for v in value)
    return item.get("name") == "subscription_status" and item.get("value") in (
        "subscribed", "unsubscribed")


def poll_export(state: AudienceState, account: Account, export_id: int, now: float) -> ExportJob:
    job = state.exports.get(export_id)
    if job is None or job.account_id != account.id:
        raise not_found()
    if job.status != "finished":
        job.polls += 1
        job.status = "started"
        _finish_if_due(state, account, job, now)
    return job


def settle(state: AudienceState, account: Account, now: float) -> None:
    for job in state.exports.values():
        if job.account_id == account.id and job.status != "finished":
            _finish_if_due(state, account, job, now)


def _finish_if_due(state: AudienceState, account: Account, job: ExportJob, now: float) -> None:
    if job.polls >= 2 or now - job.created_at >= state.export_seconds:
        job.content = export_file(account, job.filters, gzipped=state.gzip_exports)
        job.status = "finished"


def export_file(account: Account, filters: list[dict[str, Json]], *, gzipped: bool) -> bytes:
    """The export's CSV (gzip unless asked otherwise) of the contacts matching ``filters``."""
    tags = sorted(f.merge_tag for f in account.fields.values())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "email", "status", "list_ids", "created_at", "updated_at", *tags])
    for contact in account.contacts.values():
        if not _matches(contact, filters):
            continue
        writer.writerow([contact.id, contact.email, contact.status,
                         ",".join(str(i) for i in sorted(contact.list_ids)),
                         contact.created_at, contact.updated_at,
                         *(_cell(contact.fields.get(tag)) for tag in tags)])
    raw = text.getvalue().encode("utf-8")
    return gzip.compress(raw) if gzipped else raw


def _matches(contact: Contact, filters: list[dict[str, Json]]) -> bool:
    for item in filters:
        if item["name"] == "list_id" and not contact.list_ids & set(item["value"]):
            return False
        if item["name"] == "subscription_status" and contact.status != item["value"]:
            return False
    return True


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_content(state: AudienceState, token: str) -> bytes | None:
    """The finished export file with this token, if any."""
    for job in state.exports.values():
        if job.token == token and job.content is not None:
            return job.content
    return None
