"""Contacts and bulk imports in the Mailtrap double.

Contacts are keyed by ``email_key`` (case-insensitive). Single-contact calls apply at once. An
import is validated in full when posted (any bad contact rejects the whole request) and applied
atomically, in posted order, at the moment it becomes finished: upsert by email, fields merged
(``null`` clears a field), ``list_ids_included`` added, ``list_ids_excluded`` removed. New
contacts beyond the account's quota (``DoubleState.max_contacts``) are not stored and are counted
in ``contacts_over_limit_count``. A failed import applies nothing. An import never changes a
contact's subscription status; only ``PATCH`` with ``unsubscribed: true`` does, and
``unsubscribed: false`` does not re-subscribe (Mailtrap does not document that it would).

All functions run under the owning double's lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from sync_service.testing.mailtrap.model import (
    Account,
    ApiError,
    Contact,
    ImportJob,
    Json,
    email_key,
    not_found,
    unprocessable,
)
from sync_service.testing.mailtrap.rules import (
    check_email,
    check_fields,
    check_lists,
    import_errors,
    int_list,
)
from sync_service.testing.mailtrap.state import DoubleState

CONTACT_NOT_FOUND: Json = {"errors": "Contact(s) not found"}


def now_ms() -> int:
    return int(time.time() * 1000)


def find_contact(account: Account, identifier: str) -> Contact | None:
    """By email (case-insensitive) when the identifier has an @, else by UUID."""
    if "@" in identifier:
        return account.contacts.get(email_key(identifier))
    return account.contact_by_id(identifier)


def get_contact(account: Account, identifier: str) -> Contact:
    found = find_contact(account, identifier)
    if found is None:
        raise not_found()
    return found


def delete_contact(account: Account, identifier: str) -> None:
    found = find_contact(account, identifier)
    if found is None:
        raise ApiError(404, CONTACT_NOT_FOUND)
    del account.contacts[email_key(found.email)]


def new_contact(state: DoubleState, account: Account, email: str) -> Contact | None:
    """Store a new empty contact, or return None when the account's quota is full."""
    if state.max_contacts is not None and len(account.contacts) >= state.max_contacts:
        return None
    stamp = now_ms()
    contact = Contact(
        id=state.next_uuid(),
        email=email,
        fields={},
        list_ids=set(),
        status="subscribed",
        created_at=stamp,
        updated_at=stamp,
    )
    account.contacts[email_key(email)] = contact
    return contact


def merge(
    account: Account,
    contact: Contact,
    fields: Mapping[str, Json],
    include: Collection[int],
    exclude: Collection[int],
) -> None:
    """Apply fields and list changes to a contact (ids or tags deleted meanwhile are skipped)."""
    for tag, value in fields.items():
        if account.field_by_tag(tag) is None:
            continue
        if value is None:
            contact.fields.pop(tag, None)
        else:
            contact.fields[tag] = value
    contact.list_ids.update(i for i in include if i in account.lists)
    contact.list_ids.difference_update(exclude)
    contact.updated_at = now_ms()


def _contact_body(body: Json) -> dict[str, Json]:
    contact = body.get("contact") if isinstance(body, dict) else None
    if not isinstance(contact, dict):
        raise unprocessable("contact", "is missing or not an object")
    return contact


def _raise_if(errors: dict[str, list[str]]) -> None:
    if errors:
        raise ApiError(422, {"errors": errors})


def create_contact(
    state: DoubleState, account: Account, body: Json, reject: Collection[str]
) -> Contact:
    """``POST .../contacts``: a new contact; an existing email is a 422."""
    contact = _contact_body(body)
    errors: dict[str, list[str]] = {}
    check_email(contact.get("email"), errors, reject)
    check_fields(contact.get("fields"), account, errors)
    check_lists(contact.get("list_ids"), [], account, errors, key="list_ids")
    _raise_if(errors)
    email = str(contact["email"])
    if email_key(email) in account.contacts:
        raise unprocessable("email", "has already been taken")
    created = new_contact(state, account, email)
    if created is None:
        raise unprocessable("base", "contacts limit reached")
    list_ids = int_list(contact.get("list_ids")) or []
    merge(account, created, contact.get("fields") or {}, list_ids, [])
    return created


def update_contact(
    state: DoubleState, account: Account, identifier: str, body: Json, reject: Collection[str]
) -> tuple[str, Contact]:
    """``PATCH .../contacts/{id or email}``: update, or create when the email is unknown.

    Returns the action (``"created"`` or ``"updated"``) and the contact.
    """
    contact = _checked_update(body, account, reject)
    existing = find_contact(account, identifier)
    if existing is None and "@" not in identifier:
        raise not_found()
    email = str(contact["email"])
    holder = account.contacts.get(email_key(email))
    if holder is not None and holder is not existing:
        raise unprocessable("email", "has already been taken")
    action = "updated"
    if existing is None:
        existing = new_contact(state, account, email)
        if existing is None:
            raise unprocessable("base", "contacts limit reached")
        action = "created"
    del account.contacts[email_key(existing.email)]
    existing.email = email
    account.contacts[email_key(email)] = existing
    included = int_list(contact.get("list_ids_included")) or []
    excluded = int_list(contact.get("list_ids_excluded")) or []
    merge(account, existing, contact.get("fields") or {}, included, excluded)
    if contact.get("unsubscribed") is True:
        existing.status = "unsubscribed"
    return action, existing


def _checked_update(body: Json, account: Account, reject: Collection[str]) -> dict[str, Json]:
    contact = _contact_body(body)
    errors: dict[str, list[str]] = {}
    check_email(contact.get("email"), errors, reject)
    check_fields(contact.get("fields"), account, errors)
    check_lists(contact.get("list_ids_included"), contact.get("list_ids_excluded"), account, errors)
    if contact.get("unsubscribed") not in (None, True, False):
        errors["unsubscribed"] = ["must be true or false"]
    _raise_if(errors)
    return contact


def create_import(
    state: DoubleState, account: Account, payload: Json, reject: Collection[str], now: float
) -> ImportJob:
    """``POST .../contacts/imports``: validate everything, then queue the import."""
    entries = import_errors(payload, account, reject)
    if entries:
        raise ApiError(422, {"errors": entries})
    job = ImportJob(
        id=state.next_id(), account_id=account.id, contacts=payload["contacts"], created_at=now
    )
    account.imports[job.id] = job
    state.pending[job.id] = job
    return job


def poll_import(
    state: DoubleState, account: Account, import_id: int, now: float, fail: Callable[[], bool]
) -> ImportJob:
    """``GET .../contacts/imports/{id}``: one status poll, which may finish the import."""
    job = account.imports.get(import_id)
    if job is None:
        raise not_found()
    if job.id in state.pending:
        job.polls += 1
        job.status = "started"
        _finish_if_due(state, job, now, fail)
    return job


def settle_imports(state: DoubleState, now: float, fail: Callable[[], bool]) -> None:
    """Finish every pending import whose policy conditions now hold."""
    for job in list(state.pending.values()):
        _finish_if_due(state, job, now, fail)


def _finish_if_due(
    state: DoubleState, job: ImportJob, now: float, fail: Callable[[], bool]
) -> None:
    if state.import_policy.is_due(job.polls, now - job.created_at):
        finish_import(state, job, failed=fail())


def finish_import(state: DoubleState, job: ImportJob, *, failed: bool) -> None:
    """End an import; a finished one is applied, all at once."""
    state.pending.pop(job.id, None)
    if failed:
        job.status = "failed"
        return
    account = state.accounts[job.account_id]
    for contact in job.contacts:
        _import_one(state, account, job, contact)
    job.status = "finished"


def _import_one(state: DoubleState, account: Account, job: ImportJob, item: Json) -> None:
    email = str(item["email"])
    contact = account.contacts.get(email_key(email))
    if contact is None:
        contact = new_contact(state, account, email)
        if contact is None:
            job.over_limit_count += 1
            return
        job.created_count += 1
    else:
        job.updated_count += 1
    merge(
        account,
        contact,
        item.get("fields") or {},
        item.get("list_ids_included") or [],
        item.get("list_ids_excluded") or [],
    )
