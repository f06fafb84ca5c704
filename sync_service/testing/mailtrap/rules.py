"""Validation rules of the Mailtrap double: what Mailtrap rejects, with its error messages.

Two shapes of 422 exist in the spec and both are produced here:

* an import (``POST .../contacts/imports``) is rejected as a whole when any contact is bad, with
  ``ContactImportErrors``: ``{"errors": [{"email": ..., "errors": {base|email|fields|
  field_merge_tag: [...]}}]}`` — one entry per bad contact;
* single-contact and field/list calls answer ``UnprocessableEntity``:
  ``{"errors": {"<attribute>": ["message", ...]}}``.

Rules beyond Mailtrap's documentation, chosen so the project notices its own mistakes: duplicate
emails inside one import are rejected; an empty import is rejected; unknown attributes on an
imported contact (for example ``unsubscribed``, which an import cannot do) are rejected; field
values must have the JSON type of the field's ``data_type`` (no string-to-number coercion).
``null`` is accepted for any field and clears it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from sync_service.testing.mailtrap.model import (
    MAX_CONTACTS_PER_IMPORT,
    MAX_TEXT_LENGTH,
    Account,
    Json,
    email_key,
)

Errors = dict[str, list[str]]
IMPORT_KEYS = frozenset({"email", "fields", "list_ids_included", "list_ids_excluded"})
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# An all-ASCII address whose local part is an RFC 5322 dot-atom (email-validator's DOT_ATOM_TEXT):
# nearly every address. For these, validate_email's verdict is the domain's verdict plus a length
# check, so the costly part (IDNA/UTS-46 checks of the domain) is done once per domain.
_ATEXT = r"a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~"
_PLAIN_LOCAL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_MAX_EMAIL_BYTES = 254  # email-validator's EMAIL_MAX_LENGTH, in UTF-8 bytes


@lru_cache(maxsize=200_000)
def is_valid_email(email: str) -> bool:
    """Syntax check only (no DNS): the verdict of ``validate_email``, its costly part per domain.

    For an ASCII ``local@domain`` with a dot-atom local part, ``validate_email`` splits at the
    first ``@`` and accepts the local part as it is, so the address is valid exactly when the
    domain is and the longest of its three spellings (as given, normalised, IDNA ASCII) fits
    in 254 bytes with the local part. Anything else (quotes, display names, non-ASCII) gets the
    full check.
    """
    local, at, domain = email.partition("@")
    if at and email.isascii() and _PLAIN_LOCAL.fullmatch(local):
        longest = _domain_bytes(domain)
        return longest is not None and len(local) + 1 + longest <= _MAX_EMAIL_BYTES
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


@lru_cache(maxsize=65_536)
def _domain_bytes(domain: str) -> int | None:
    """None when ``validate_email`` refuses ``x@domain``; else the domain's longest spelling.

    A refusal of ``x@domain`` is a refusal of every ``local@domain`` with a plain local part:
    the same domain checks run, and a longer local part only makes the length check stricter.
    """
    try:
        info = validate_email(f"x@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    spellings = (domain, info.domain, info.ascii_domain)
    return max(len(s.encode("utf-8")) for s in spellings)


def value_fits(data_type: str, value: Json) -> bool:
    """Whether ``value`` may be stored in a field of ``data_type`` (None clears any field)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return data_type == "boolean"
    check = _FITS.get(data_type)
    return check is not None and check(value)


def _is_date(value: Json) -> bool:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


_FITS: dict[str, Callable[[Json], bool]] = {  # booleans are handled before these
    "text": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT_LENGTH,
    "integer": lambda v: isinstance(v, int),
    "float": lambda v: isinstance(v, int | float) and math.isfinite(v),
    "date": _is_date,
}


def _add(errors: Errors, key: str, message: str) -> None:
    errors.setdefault(key, []).append(message)


def check_fields(fields: Json, account: Account, errors: Errors) -> None:
    """Unknown merge tags go under ``field_merge_tag``, ill-typed values under ``fields``."""
    if fields is None:
        return
    if not isinstance(fields, dict):
        _add(errors, "fields", "must be an object keyed by merge tag")
        return
    unknown: list[str] = []
    invalid: list[str] = []
    for tag, value in fields.items():
        known = account.field_by_tag(tag)
        if known is None:
            unknown.append(tag)
        elif not value_fits(known.data_type, value):
            invalid.append(tag)
    if unknown:
        _add(errors, "field_merge_tag", "is invalid: " + ", ".join(unknown))
    if invalid:
        _add(errors, "fields", "contains invalid values: " + ", ".join(invalid))


def int_list(value: Json) -> list[int] | None:
    """The list of integer ids in ``value``, or None when it is not one."""
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    if any(not isinstance(v, int) or isinstance(v, bool) for v in value):
        return None
    return list(value)


def check_lists(
    included: Json, excluded: Json, account: Account, errors: Errors, *, key: str = "base"
) -> None:
    """Unknown list ids, malformed id arrays, and ids both included and excluded."""
    inc, exc = int_list(included), int_list(excluded)
    if inc is None or exc is None:
        _add(errors, key, "list ids must be arrays of integers")
        return
    missing = sorted((set(inc) | set(exc)) - account.lists.keys())
    if missing:
        _add(errors, key, "list_ids " + _joined(missing) + " do not exist")
    both = sorted(set(inc) & set(exc))
    if both:
        message = f"same list_ids {_joined(both)} are specified both as included and excluded"
        _add(errors, key, message)


def _joined(ids: Collection[int]) -> str:
    return ", ".join(str(i) for i in ids)


def check_email(email: Json, errors: Errors, reject: Collection[str] = ()) -> None:
    """Invalid syntax, or an address the test has told the double to refuse."""
    if not isinstance(email, str) or not email:
        _add(errors, "email", "can't be blank")
    elif not is_valid_email(email) or email_key(email) in reject:
        _add(errors, "email", "is invalid")


def _import_contact_errors(
    contact: Json, account: Account, reject: Collection[str], seen: set[str]
) -> Errors:
    errors: Errors = {}
    if not isinstance(contact, dict):
        _add(errors, "base", "each contact must be an object")
        return errors
    extra = sorted(set(contact) - IMPORT_KEYS)
    if extra:
        _add(errors, "base", "unknown attributes: " + ", ".join(extra))
    email = contact.get("email")
    check_email(email, errors, reject)
    if isinstance(email, str):
        if email_key(email) in seen:
            _add(errors, "base", "email appears more than once in this import")
        seen.add(email_key(email))
    check_fields(contact.get("fields"), account, errors)
    check_lists(contact.get("list_ids_included"), contact.get("list_ids_excluded"), account, errors)
    return errors


def _entry(contact: Json, errors: Errors) -> dict[str, Json]:
    email = contact.get("email") if isinstance(contact, dict) else None
    return {"email": email if isinstance(email, str) else "", "errors": errors}


def import_errors(
    payload: Json, account: Account, reject: Collection[str] = ()
) -> list[dict[str, Json]]:
    """The ``ContactImportErrors`` entries for an import body; empty when it is accepted."""
    contacts = payload.get("contacts") if isinstance(payload, Mapping) else None
    if not isinstance(contacts, list):
        return [_entry(None, {"base": ["contacts must be an array of contact objects"]})]
    if not contacts:
        return [_entry(None, {"base": ["contacts can't be blank"]})]
    if len(contacts) > MAX_CONTACTS_PER_IMPORT:
        message = f"cannot import more than {MAX_CONTACTS_PER_IMPORT} contacts at once"
        return [_entry(contacts[MAX_CONTACTS_PER_IMPORT], {"base": [message]})]
    seen: set[str] = set()
    entries = []
    for contact in contacts:
        errors = _import_contact_errors(contact, account, reject, seen)
        if errors:
            entries.append(_entry(contact, errors))
    return entries
