"""The Mailtrap double's state: accounts, tokens, contact lists and custom fields.

``DoubleState`` is plain data plus the operations on accounts, lists and fields (contacts and
imports are in ``contacts``). It does no locking of its own: every call happens under the
owning ``MailtrapDouble``'s lock. Operations raise ``ApiError`` with Mailtrap's status and body
when Mailtrap would refuse.

Ids of lists, fields and imports come from one counter, so a list id never equals a field id or
an import id: a client that mixes them up gets a 404 or 422, not a silent hit.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from sync_service.testing.mailtrap.limits import ImportPolicy
from sync_service.testing.mailtrap.model import (
    DATA_TYPES,
    MAX_FIELD_NAME_LENGTH,
    MAX_FIELDS_PER_ACCOUNT,
    MAX_LIST_NAME_LENGTH,
    MAX_LISTS_PER_ACCOUNT,
    Account,
    ApiError,
    AudienceState,
    Contact,
    ContactList,
    ExportJob,
    Field,
    ImportJob,
    Json,
    ReceivedEvent,
    not_found,
    unprocessable,
)

OWNER = 1000  # access_levels: 1000 owner, 100 admin, 10 viewer


class DoubleState:
    """Everything the double stores; see the module docstring."""

    def __init__(self, seed: int = 0) -> None:
        self.accounts: dict[int, Account] = {}
        self.tokens: dict[str, dict[int, int]] = {}  # token -> account id -> access level
        self.import_policy = ImportPolicy()
        self.max_contacts: int | None = None  # per account; None is unlimited
        self.pending: dict[int, ImportJob] = {}  # imports not yet finished or failed
        self._ids = itertools.count(1)
        self._uuids = random.Random(seed)  # noqa: S311 - repeatable ids, not security

    def next_id(self) -> int:
        return next(self._ids)

    def next_uuid(self) -> str:
        return str(uuid.UUID(int=self._uuids.getrandbits(128), version=4))

    # accounts and tokens

    def add_account(self, account_id: int, name: str) -> Account:
        if account_id in self.accounts:
            raise ValueError(f"account {account_id} exists already")
        account = Account(id=account_id, name=name)
        self.accounts[account_id] = account
        return account

    def grant(self, token: str, account_id: int, access_level: int = OWNER) -> None:
        """Let ``token`` see ``account_id`` (creating the token if new)."""
        if account_id not in self.accounts:
            raise KeyError(f"no account {account_id}")
        self.tokens.setdefault(token, {})[account_id] = access_level

    def accounts_json(self, token: str) -> list[dict[str, Json]]:
        """``GET /api/accounts``: the accounts this token sees."""
        grants = self.tokens.get(token, {})
        return [
            {"id": a, "name": self.accounts[a].name, "access_levels": [level]}
            for a, level in sorted(grants.items())
        ]

    def account(self, account_id: int) -> Account:
        try:
            return self.accounts[account_id]
        except KeyError:
            raise KeyError(f"no account {account_id} in the double") from None

    # contact lists

    def get_list(self, account: Account, list_id: int) -> ContactList:
        found = account.lists.get(list_id)
        if found is None:
            raise not_found()
        return found

    def create_list(self, account: Account, name: Json) -> ContactList:
        _check_name(name, MAX_LIST_NAME_LENGTH)
        if len(account.lists) >= MAX_LISTS_PER_ACCOUNT:
            raise unprocessable("base", f"cannot have more than {MAX_LISTS_PER_ACCOUNT} lists")
        created = ContactList(id=self.next_id(), name=name)
        account.lists[created.id] = created
        return created

    def update_list(self, account: Account, list_id: int, name: Json) -> ContactList:
        found = self.get_list(account, list_id)
        if name is not None:
            _check_name(name, MAX_LIST_NAME_LENGTH)
            found.name = name
        return found

    def delete_list(self, account: Account, list_id: int) -> None:
        self.get_list(account, list_id)
        del account.lists[list_id]
        for contact in account.contacts.values():
            contact.list_ids.discard(list_id)

    # custom fields

    def get_field(self, account: Account, field_id: int) -> Field:
        found = account.fields.get(field_id)
        if found is None:
            raise not_found()
        return found

    def create_field(self, account: Account, body: Json) -> Field:
        body = body if isinstance(body, dict) else {}
        name, tag, data_type = body.get("name"), body.get("merge_tag"), body.get("data_type")
        _check_name(name, MAX_FIELD_NAME_LENGTH)
        _check_name(tag, MAX_FIELD_NAME_LENGTH, attribute="merge_tag")
        if data_type not in DATA_TYPES:
            raise unprocessable("data_type", "is not included in the list")
        _check_unique(account, name, tag, exclude=None)
        if len(account.fields) >= MAX_FIELDS_PER_ACCOUNT:
            raise unprocessable("base", f"cannot have more than {MAX_FIELDS_PER_ACCOUNT} fields")
        created = Field(id=self.next_id(), name=name, merge_tag=tag, data_type=data_type)
        account.fields[created.id] = created
        return created

    def update_field(self, account: Account, field_id: int, body: Json) -> Field:
        found = self.get_field(account, field_id)
        body = body if isinstance(body, dict) else {}
        if "data_type" in body and body["data_type"] != found.data_type:
            raise unprocessable("data_type", "cannot be changed")
        name, tag = body.get("name", found.name), body.get("merge_tag", found.merge_tag)
        _check_name(name, MAX_FIELD_NAME_LENGTH)
        _check_name(tag, MAX_FIELD_NAME_LENGTH, attribute="merge_tag")
        _check_unique(account, name, tag, exclude=field_id)
        if tag != found.merge_tag:
            for contact in account.contacts.values():
                if found.merge_tag in contact.fields:
                    contact.fields[tag] = contact.fields.pop(found.merge_tag)
        found.name, found.merge_tag = name, tag
        return found

    def delete_field(self, account: Account, field_id: int) -> None:
        found = self.get_field(account, field_id)
        del account.fields[field_id]
        for contact in account.contacts.values():
            contact.fields.pop(found.merge_tag, None)


def _check_name(value: Json, max_length: int, *, attribute: str = "name") -> None:
    if not isinstance(value, str) or not value.strip():
        raise unprocessable(attribute, "can't be blank")
    if len(value) > max_length:
        raise unprocessable(attribute, f"is too long (maximum is {max_length} characters)")


def _check_unique(account: Account, name: str, tag: str, *, exclude: int | None) -> None:
    errors: dict[str, list[str]] = {}
    for other in account.fields.values():
        if other.id == exclude:
            continue
        if other.name == name:
            errors["name"] = ["has already been taken"]
        if other.merge_tag == tag:
            errors["merge_tag"] = ["has already been taken"]
    if errors:
        raise ApiError(422, {"errors": errors})


# --- consent branch: custom events and contact exports ---------------------------------------
# What the double does with them:
#
# - ``POST .../contacts/{id or email}/events`` validates ``{name, params}`` as the spec writes it
#   (name a string of at most 255 characters; params an object of scalar values whose keys are at
#   most 255 characters), answers 404 when the contact does not exist and 201 with
#   ``{contact_id, contact_email, name, params}``; every accepted event is kept in order.
# - ``POST .../contacts/exports`` takes ``filters`` (``list_id`` equal [ids]: contacts in any of
#   them; ``subscription_status`` equal subscribed|unsubscribed) and answers 201 ``created``; one
#   export at a time per account (422 while another is unfinished). Each ``GET`` poll moves it on:
#   created → started → finished, as does ``EXPORT_SECONDS`` of the double's clock. When it
#   finishes, a snapshot of the matching contacts is written as a gzip CSV and its URL (on the
#   double's own host, ``/downloads/exports/<token>.csv.gz``, no API token needed) is reported.
# - The CSV: ``id,email,status,list_ids,created_at,updated_at`` then one column per custom field
#   (by merge tag); ``list_ids`` joins ids with commas inside one cell; booleans are
#   ``true``/``false``; an absent field is an empty cell.
#
# All functions run under the owning double's lock.

MAX_EVENT_NAME = 255
_EXPORT_BUSY: Json = {"errors": {"base": [
    "There is a previous export initiated. You will be notified by email once it is completed."]}}


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
    elif len(name) > MAX_EVENT_NAME:
        errors["name"] = ["is too long"]
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        errors["params"] = ["must be a hash"]
        return errors
    for key, value in params.items():
        if len(key) > MAX_EVENT_NAME:
            errors.setdefault("params", []).append(f"key '{key[:20]}' is too long")
        if isinstance(value, dict | list):
            errors.setdefault("params", []).append(f"value for '{key}' must be a scalar")
        elif isinstance(value, str) and len(value) > MAX_EVENT_NAME:
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
        raise ApiError(422, _EXPORT_BUSY)
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
