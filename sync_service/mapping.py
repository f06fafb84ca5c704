"""Row → contact: email normalisation, field typing for Mailtrap's data types, canonical hashing.

Pure functions, no I/O. A value that cannot become what Mailtrap's field expects raises
``RecordError`` naming the field and the reason; the record is then skipped with that reason on
record, never sent half-right.

Choices where Mailtrap is silent (see README "Mapping rules"):
- the email is trimmed and lower-cased; an internationalised domain is sent in its ASCII (IDNA)
  form so one address has one spelling;
- NULL text becomes "" (clears the field); NULL of another type is left out, since Mailtrap has
  no documented way to clear a typed field;
- text longer than 255 characters and NUL characters are refused rather than truncated;
- ``integer`` values are kept within ±(2**53 - 1), the range every JSON parser reads exactly
  (RFC 8259 §6; Mailtrap documents no range of its own), so no value is sent that a reader could
  round; a larger one rejects the row;
- parsing is strict: text becomes a number only when it is written as one (ASCII digits, an
  optional sign, a decimal point and exponent for ``float``; ``"1_5"`` or ``"١٢"`` are not
  numbers), and a ``date`` only when the whole text is an ISO date or date-time;
- nothing the mapper accepts can make ``contact_hash`` fail: every value is plain JSON (no
  lone surrogates, integers within range).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import email_validator
import orjson
from email_validator import EmailNotValidError, validate_email

from sync_service.errors import ConfigError
from sync_service.errors import MappingRejected as MappingRejected  # noqa: PLC0414 - old home
from sync_service.models import Contact, FieldValue, RejectKind

TEXT_LIMIT = 255
INTEGER_LIMIT = 2**53 - 1  # JSON-safe: exact in every JSON reader (RFC 8259 §6)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)
# nan and inf are let through to be refused as "not finite", which says more than "not a number".
_FLOAT_TEXT = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]{1,4})?"
                         r"|nan|inf|infinity)", re.ASCII | re.IGNORECASE)
DATA_TYPES = ("text", "integer", "float", "boolean", "date")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


# An ASCII dot-atom local part (RFC 5322 atext) and a domain: the shape of nearly every address.
_SIMPLE = re.compile(r"([a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
                     r"@([a-z0-9.-]+)")
# A domain ``email_validator`` accepts as it is, judged without it: two or more ASCII LDH labels
# of 1 to 63 characters that neither start nor end with a hyphen, the last one ending with a
# letter (every TLD does). Labels with "--" (Punycode "xn--", RFC 5890 R-LDH) are left to it.
_LDH_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                         r"(?:[a-z0-9][a-z0-9-]{0,61})?[a-z]", re.ASCII)
_DOMAIN_MAX = 253  # RFC 1035 (email_validator's DOMAIN_MAX_LENGTH)


def _plain_domain(domain: str) -> bool:
    """Whether ``domain`` is certainly valid for ``email_validator`` (same defaults as below):
    LDH labels, at most 253 characters, and not a special-use name (``.test``, ``.local``...).
    False only means "ask email_validator" (tests/unit/test_email_fast_path.py compares them)."""
    if len(domain) > _DOMAIN_MAX or "--" in domain or not _LDH_DOMAIN.fullmatch(domain):
        return False
    return not any(domain == name or domain.endswith("." + name)
                   for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)


@lru_cache(maxsize=65_536)
def _domain_problem(domain: str) -> str | None:
    """Validation of one domain, done once per domain (rows share few domains); a plain ASCII
    domain is judged by ``_plain_domain`` (~1 µs), any other by ``email_validator`` (~60 µs)."""
    if _plain_domain(domain):
        return None
    try:
        validate_email(f"x@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def normalise_email(value: Any) -> str:
    """Trim, lower-case and validate an address; raise MappingRejected saying why not."""
    if isinstance(value, str):
        text = value.strip().lower()
        # A match has no NUL, is ASCII and is not empty: the checks below would all pass.
        simple = _SIMPLE.fullmatch(text)
        if simple is not None and simple.end(1) <= 64 and len(text) <= 254:
            # Same verdict as the full check below, at a fraction of the cost per row.
            problem = _domain_problem(simple.group(2))
            if problem is None:
                return text
            raise MappingRejected(RejectKind.INVALID_EMAIL, f"invalid email {text!r}: {problem}")
    return _normalise_unusual(value)


def _normalise_unusual(value: Any) -> str:
    """``normalise_email`` of anything but a plain ASCII dot-atom address: the full check."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MappingRejected(RejectKind.INVALID_EMAIL, "email is missing")
    if not isinstance(value, str):
        raise MappingRejected(RejectKind.INVALID_EMAIL, f"email is a {type(value).__name__}")
    text = value.strip().lower()
    if "\x00" in text:
        raise MappingRejected(RejectKind.INVALID_EMAIL, "email contains a NUL character")
    if not _is_unicode(text):
        raise MappingRejected(RejectKind.INVALID_EMAIL, "email is not valid Unicode text")
    try:
        info = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise MappingRejected(RejectKind.INVALID_EMAIL, f"invalid email {text!r}: {exc}") from exc
    return _sendable(info.local_part, info.ascii_domain)


def _sendable(local_part: str, ascii_domain: str) -> str:
    """One spelling per address: the domain always in its ASCII (IDNA) form."""
    return f"{local_part}@{ascii_domain}".lower()


def _is_unicode(text: str) -> bool:
    """False for text holding lone surrogates (undecodable bytes), which JSON cannot carry."""
    if text.isascii():  # nearly every value: no copy made
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    """What a value is, for a reason that must not repeat the value itself."""
    return type(value).__name__


def _as_text(value: Any) -> str:
    if type(value) is str and value.isascii() and len(value) <= TEXT_LIMIT and "\x00" not in value:
        return value  # nearly every text value: what the checks below would give
    if isinstance(value, datetime | date):
        text = value.isoformat()
    elif isinstance(value, bytes | bytearray | memoryview):
        raise ValueError("is binary, not text")
    else:
        text = str(value)
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    if not _is_unicode(text):
        raise ValueError("is not valid Unicode text (it holds undecodable characters)")
    if len(text) > TEXT_LIMIT:
        raise ValueError(f"is {len(text)} characters, over Mailtrap's {TEXT_LIMIT}")
    return text


def _in_range(number: int | Decimal | float, value: Any) -> int:
    if not -INTEGER_LIMIT <= number <= INTEGER_LIMIT:
        raise ValueError(f"{_describe(value)} is outside the integer range ±{INTEGER_LIMIT} "
                         "(2**53 - 1, what every JSON reader keeps exact)")
    return int(number)


def _as_integer(value: Any) -> int:
    if type(value) is int and -INTEGER_LIMIT <= value <= INTEGER_LIMIT:
        return value  # nearly every value: what the checks below would give
    if isinstance(value, bool):
        raise ValueError("is a boolean, not an integer")
    if isinstance(value, int):
        return _in_range(value, value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return _in_range(value, value)
    if isinstance(value, float) and value.is_integer():
        return _in_range(value, value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return _in_range(int(value.strip()), value)
    raise ValueError(f"{_describe(value)} is not an integer")


def _describe(value: Any) -> str:
    """A short, printable description of a value for a reason: short plain text or a number is
    shown, anything else only by its kind (it could be long, binary or hold control characters).
    """
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        text = str(value)
        return text if len(text) <= 40 else f"a {len(text)}-digit {_kind(value)}"
    if isinstance(value, str) and len(value) <= 40 and value.isprintable() and _is_unicode(value):
        return repr(value)
    return f"a {_kind(value)} value"


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("is a boolean, not a number")
    if isinstance(value, str):
        if not _FLOAT_TEXT.fullmatch(value.strip()):
            raise ValueError(f"{_describe(value)} is not a number")
        value = value.strip()
    elif not isinstance(value, int | float | Decimal):
        raise ValueError(f"{_describe(value)} is not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{_describe(value)} is not a number Mailtrap can hold") from exc
    if not math.isfinite(number):
        raise ValueError(f"{_describe(value)} is not a finite number")
    return number


def _as_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{_describe(value)} is not a boolean")


def _as_date(value: Any) -> str:
    if type(value) is date:
        return value.isoformat()  # as below (a datetime is a date too, hence ``type``)
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return _date_text(value)
    raise ValueError(f"{_describe(value)} is not a date")


def _date_text(value: str) -> str:
    """A whole ISO date (``2025-01-02``) or date-time (``2025-01-02 10:00:00``), as a date."""
    text = value.strip()
    if text.isascii():
        try:
            if len(text) == 10:
                return date.fromisoformat(text).isoformat()
            return datetime.fromisoformat(text).date().isoformat()
        except ValueError:
            pass
    raise ValueError(f"{_describe(value)} is not a yyyy-mm-dd date")


_CONVERTERS: dict[str, Callable[[Any], FieldValue]] = {
    "text": _as_text,
    "integer": _as_integer,
    "float": _as_float,
    "boolean": _as_boolean,
    "date": _as_date,
}


class Mapper:
    """Turns a source row into the contact that would be sent, for one pipeline."""

    def __init__(
        self,
        *,
        email_column: str,
        fields: Mapping[str, str],
        field_types: Mapping[str, str],
        list_ids: tuple[int, ...],
        memberships: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None,
        managed: tuple[int, ...] = (),
    ) -> None:
        missing = sorted(tag for tag in fields if tag not in field_types)
        if missing:
            raise ConfigError(
                "mapping.fields names merge tags that do not exist in Mailtrap: "
                + ", ".join(missing) + " (create them in Mailtrap, or declare them as tables "
                "with a `type` so they are created)"
            )
        unknown = sorted(f"{tag} ({field_types[tag]})" for tag in fields
                         if field_types[tag] not in _CONVERTERS)
        if unknown:
            raise ConfigError("Mailtrap fields of a data type this version cannot send: "
                              + ", ".join(unknown))
        self.email_column = email_column
        self._fields: list[tuple[str, str, Callable[[Any], FieldValue], str]] = [
            (tag, column, _CONVERTERS[field_types[tag]], field_types[tag])
                        for tag, column in sorted(fields.items())]
        self.list_ids = tuple(sorted(list_ids))
        # Lists that follow the data (``memberships``): with the static ones, the lists this
        # pipeline manages, the only ones it ever excludes a contact from.
        self.memberships = memberships
        self.managed_ids = tuple(sorted({*self.list_ids, *managed}))

    def contact(self, values: Mapping[str, Any]) -> Contact:
        """The contact for one row, or MappingRejected saying which value is wrong and why."""
        email = normalise_email(values.get(self.email_column))
        typed: dict[str, FieldValue] = {}
        for tag, column, convert, data_type in self._fields:
            raw = values.get(column)
            if raw is None:
                if data_type == "text":
                    typed[tag] = ""
                continue
            if (convert is _as_text and type(raw) is str and raw.isascii()
                    and len(raw) <= TEXT_LIMIT and "\x00" not in raw):
                typed[tag] = raw  # _as_text's own fast path, without the call
                continue
            try:
                typed[tag] = convert(raw)
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise MappingRejected(
                    RejectKind.INVALID_VALUE, f"field {tag} (column {column}) {exc}", field=tag
                ) from exc
        list_ids = self.list_ids
        if self.memberships is not None:
            list_ids = tuple(sorted({*list_ids, *self.memberships(values)}))
        return Contact(email=email, fields=typed, list_ids=list_ids)


def contact_hash(contact: Contact) -> str:
    """A stable digest of exactly what would be sent (email, typed fields, lists).

    Never raises: what the mapper produces is plain JSON, and anything else (a contact built by
    hand with an out-of-range integer or a lone surrogate) is hashed from an escaped form.
    """
    fields = contact.fields
    # orjson writes a tuple as the same JSON array as a list: the bytes, so the hash, are equal.
    document = {"e": contact.email, "f": fields if type(fields) is dict else dict(fields),
                "l": contact.list_ids}
    try:
        canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        canonical = json.dumps(document, sort_keys=True, default=repr).encode("ascii")
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
