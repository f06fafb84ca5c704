"""Property tests of the mapper: any value a SQL driver can hand over, in any mapped field type,
is either sent typed exactly as Mailtrap's field wants it or rejected with a reason; nothing
escapes as an exception, and the hash of whatever is accepted never fails.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_service.mapping import (
    DATA_TYPES,
    INTEGER_LIMIT,
    TEXT_LIMIT,
    Mapper,
    MappingRejected,
    contact_hash,
)
from sync_service.models import Contact, RejectKind

_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=6,
)

# What SQLAlchemy's drivers return for the SQL types (INTEGER/BIGINT/NUMERIC, REAL/DOUBLE, TEXT,
# CHAR, BLOB/BYTEA, BOOLEAN, DATE, TIMESTAMP [WITH TIME ZONE], TIME, INTERVAL, UUID, JSON), and
# the text SQLite hands over for any of them (its columns hold any type).
SQL_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(places=2, min_value=-10**20, max_value=10**20),
    st.text(),
    st.text(alphabet="0123456789+-._eE ", max_size=12),
    st.sampled_from(["1_5", "١٢", "0x10", " 42 ", "1e5", "yes", "NO", "2025-01-01garbage",
                     "2025-01-01", "2025-01-01T10:00:00+02:00", "yesterday", "\ud800", "nan"]),
    st.binary(),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    st.times(),
    st.timedeltas(),
    st.uuids(),
    _json,
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TYPES = {f"f_{data_type}": data_type for data_type in DATA_TYPES}


def _outcome(mapper: Mapper, values: dict[str, Any]) -> Contact | MappingRejected:
    """The contact, or the rejection (any other exception escapes and fails the test)."""
    try:
        return mapper.contact(values)
    except MappingRejected as exc:
        return exc


def _well_typed(data_type: str, value: Any) -> bool:
    if data_type == "text":
        return isinstance(value, str) and len(value) <= TEXT_LIMIT and "\x00" not in value
    if data_type == "integer":
        return type(value) is int and abs(value) <= INTEGER_LIMIT
    if data_type == "float":
        return type(value) is float and math.isfinite(value)
    if data_type == "boolean":
        return type(value) is bool
    return isinstance(value, str) and bool(_DATE.fullmatch(value)) and bool(
        date.fromisoformat(value))


@settings(max_examples=400, deadline=None)
@given(data_type=st.sampled_from(DATA_TYPES), value=SQL_VALUES)
def test_every_value_is_typed_for_its_field_or_rejected_with_a_reason(
    data_type: str, value: Any
) -> None:
    """A value of any SQL type in a field of any Mailtrap type is sent typed correctly (and hashes
    and serialises) or rejected as invalid_value with a reason naming the field."""
    tag = f"f_{data_type}"
    mapper = Mapper(email_column="email", fields={tag: "col"}, field_types=_TYPES, list_ids=(1,))
    contact = _outcome(mapper, {"email": "a@example.com", "col": value})
    if isinstance(contact, MappingRejected):
        assert contact.kind is RejectKind.INVALID_VALUE
        assert contact.field == tag
        assert contact.reason.startswith(f"field {tag} (column col) ")
        assert len(contact.reason) < 400
        return
    sent = contact.fields.get(tag)
    if value is None:
        assert sent == ("" if data_type == "text" else None)
        return
    assert _well_typed(data_type, sent), (data_type, value, sent)
    assert len(contact_hash(contact)) == 32
    assert orjson.loads(orjson.dumps(dict(contact.fields))) == dict(contact.fields)


@settings(max_examples=200, deadline=None)
@given(value=SQL_VALUES)
def test_any_email_value_is_an_address_or_an_invalid_email(value: Any) -> None:
    """Whatever the email column holds, the row maps to a sendable address or is rejected as
    invalid_email; no exception escapes."""
    mapper = Mapper(email_column="email", fields={}, field_types={}, list_ids=())
    contact = _outcome(mapper, {"email": value})
    if isinstance(contact, MappingRejected):
        assert contact.kind is RejectKind.INVALID_EMAIL
        return
    assert "@" in contact.email
    assert contact.email.encode("utf-8")


@given(fields=st.dictionaries(st.text(max_size=5), SQL_VALUES, max_size=4),
       email=st.text(max_size=20))
def test_contact_hash_never_raises(fields: dict[str, Any], email: str) -> None:
    """Even a contact built by hand with values the mapper would refuse hashes without error."""
    digest = contact_hash(Contact(email=email, fields=fields, list_ids=(3, 1)))
    assert re.fullmatch(r"[0-9a-f]{32}", digest)


def test_the_reported_hostile_values_are_rejected_not_crashing() -> None:
    """The cases of issue 8: a 70-bit integer, '1_5' as a float, a date with trailing garbage,
    Unicode digits, a lone surrogate in text: each one a rejection naming its field."""
    mapper = Mapper(email_column="email", fields={t: t for t in _TYPES}, field_types=_TYPES,
                    list_ids=())
    cases = {"f_integer": 2**70, "f_float": "1_5", "f_date": "2025-01-01garbage",
             "f_text": "bad \ud800 text"}
    for tag, value in cases.items():
        outcome = _outcome(mapper, {"email": "a@example.com", tag: value})
        assert isinstance(outcome, MappingRejected), f"{tag}={value!r} was accepted"
        assert outcome.field == tag
    assert mapper.contact({"email": "a@example.com", "f_integer": INTEGER_LIMIT}).fields[
        "f_integer"] == INTEGER_LIMIT

