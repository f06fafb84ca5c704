"""Row → contact: email normalisation, typing per Mailtrap data type, and hashing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sync_service.errors import ConfigError
from sync_service.mapping import Mapper, MappingRejected, contact_hash, normalise_email
from sync_service.models import RejectKind

TYPES = {"name": "text", "age": "integer", "score": "float", "vip": "boolean", "born": "date"}


def _mapper(**fields: str) -> Mapper:
    return Mapper(email_column="email", fields=fields or {k: k for k in TYPES},
                  field_types=TYPES, list_ids=(7, 3))


def test_email_is_trimmed_and_lowercased() -> None:
    """Addresses differing only by case and spaces map to one email."""
    assert normalise_email("  Ann.Smith@Example.COM ") == "ann.smith@example.com"


@pytest.mark.parametrize("bad", [None, "", "   ", "no-at-sign", "a@b", "x@exa mple.com",
                                 "nul\x00@example.com", 42])
def test_invalid_emails_are_rejected_with_a_reason(bad: object) -> None:
    """Missing, malformed and non-text emails are refused as INVALID_EMAIL."""
    with pytest.raises(MappingRejected) as info:
        normalise_email(bad)
    assert info.value.kind is RejectKind.INVALID_EMAIL
    assert info.value.reason


def test_idn_domain_is_sent_in_ascii_form() -> None:
    """An internationalised domain becomes its IDNA (xn--) spelling, one spelling per address."""
    assert normalise_email("Bob@Bücher.example") == "bob@xn--bcher-kva.example"
    assert normalise_email("José@Bücher.example") == "josé@xn--bcher-kva.example"


def test_values_are_typed_for_each_data_type() -> None:
    """Source values become JSON values of the Mailtrap field's data type."""
    contact = _mapper().contact({
        "email": "a@example.com", "name": 12, "age": Decimal("41"), "score": "2.5",
        "vip": "yes", "born": datetime(1990, 5, 17, 8, 0, tzinfo=UTC),
    })
    assert contact.fields == {"name": "12", "age": 41, "score": 2.5, "vip": True,
                              "born": "1990-05-17"}
    assert contact.list_ids == (3, 7)


def test_null_text_clears_and_null_typed_value_is_left_out() -> None:
    """NULL text is sent as "" (clears it); a NULL integer is not sent at all."""
    contact = _mapper().contact({"email": "a@example.com", "name": None, "age": None,
                                 "score": None, "vip": None, "born": date(2000, 1, 2)})
    assert contact.fields == {"name": "", "born": "2000-01-02"}


@pytest.mark.parametrize(("column", "value", "words"), [
    ("name", "x" * 256, "256 characters"),
    ("name", "bad\x00byte", "NUL"),
    ("age", "4.5", "not an integer"),
    ("age", True, "boolean"),
    ("score", "nan", "finite"),
    ("vip", "maybe", "not a boolean"),
    ("born", "17/05/1990", "yyyy-mm-dd"),
])
def test_values_that_do_not_fit_are_rejected_naming_the_field(column: str, value: object,
                                                              words: str) -> None:
    """A value that does not fit its field is refused, naming field, column and why."""
    with pytest.raises(MappingRejected) as info:
        _mapper().contact({"email": "a@example.com", column: value})
    assert info.value.kind is RejectKind.INVALID_VALUE
    assert column in info.value.reason
    assert words in info.value.reason


def test_unknown_merge_tag_is_a_config_error() -> None:
    """Mapping a merge tag that Mailtrap does not have names the missing tags."""
    with pytest.raises(ConfigError, match="company, zip"):
        Mapper(email_column="email", fields={"zip": "zip", "company": "c"},
               field_types=TYPES, list_ids=())


def test_hash_changes_with_content_not_with_order() -> None:
    """The hash is canonical: same content → same hash; any sent change → a new hash."""
    mapper = _mapper(name="name", age="age")
    one = mapper.contact({"email": "a@example.com", "name": "Ann", "age": 3})
    same = mapper.contact({"age": 3, "name": "Ann", "email": "A@example.com "})
    other = mapper.contact({"email": "a@example.com", "name": "Ann", "age": 4})
    assert contact_hash(one) == contact_hash(same)
    assert contact_hash(one) != contact_hash(other)


_LOCAL = st.text(alphabet="abzAZ09.+-_'!#%{}~\"ü", max_size=70)
_LABEL = st.text(alphabet="abzAZ09-_ü", max_size=70)
_DOMAIN = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["localhost", "example", "example.test", "example.com", "[192.168.0.1]",
                     "bücher.example", "sub.example.co.uk"]),
)
_ADDRESSES = st.one_of(st.emails(), st.builds("{}@{}".format, _LOCAL, _DOMAIN))


@given(_ADDRESSES)
@settings(max_examples=400, deadline=None)
@example("plain@example.com")
@example("first.last+tag@sub.example.co.uk")
@example("o'brien@example.ie")
@example("x@localhost")
@example("a..b@example.com")
@example(".a@example.com")
@example("a@-example.com")
@example("a@example")
@example("a@example.test")
@example("user@[192.168.0.1]")
@example("a" * 65 + "@example.com")
@example("x@" + "a" * 250 + ".com")
@example("üser@example.com")
@example("bob@bücher.example")
@example("a@exa_mple.com")
def test_fast_path_agrees_with_full_validation(address: str) -> None:
    """For any address, the per-domain fast path gives email-validator's verdict and spelling."""
    try:
        info = validate_email(address, check_deliverability=False)
        expected: str | None = f"{info.local_part}@{info.ascii_domain}".lower()
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalise_email(address)
    except MappingRejected:
        got = None
    assert got == expected
