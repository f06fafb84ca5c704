"""The mapper's email fast paths (a plain dot-atom address, an ASCII LDH domain judged without
``email_validator``) give exactly the verdicts, normalised addresses and reasons of the full
check: ``email_validator.validate_email`` on the trimmed, lower-cased address (issue 11).

``_reference`` is the full path, as ``normalise_email`` was before any fast path: every address
goes through ``validate_email``. A difference in verdict or output would change who is sent and
under which address (and every stored hash), so the corpus covers the awkward corners and
hypothesis generates addresses near the fast path's edges.
"""

from __future__ import annotations

import string
from typing import Any

import email_validator
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sync_service.mapping import MappingRejected, _domain_problem, _plain_domain, normalise_email


def _reference(value: Any) -> tuple[str, str]:
    """("ok", address) or ("rejected", reason) by the full check alone (no fast path)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "rejected", "email is missing"
    if not isinstance(value, str):
        return "rejected", f"email is a {type(value).__name__}"
    text = value.strip().lower()
    if "\x00" in text:
        return "rejected", "email contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "rejected", "email is not valid Unicode text"
    try:
        info = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        return "rejected", f"invalid email {text!r}: {exc}"
    return "ok", f"{info.local_part}@{info.ascii_domain}".lower()


def _ours(value: Any) -> tuple[str, str]:
    try:
        return "ok", normalise_email(value)
    except MappingRejected as exc:
        return "rejected", exc.reason


def _same_as_reference(value: Any) -> None:
    # A domain problem is found on "x@<domain>" (once per domain); its reason must still be
    # email_validator's message for the whole address.
    assert _ours(value) == _reference(value), value


LONG_LABEL = "a" * 63
CORPUS: list[Any] = [
    # valid, plain
    "ada@example.com", "Ada.Lovelace@Example.COM", "  grace@outlook.com \n", "a@b.co",
    "x@sub.domain.example.org", "first.last+tag@gmail.com", "o'neil@irish.ie",
    "user!#$%&'*+/=?^_`{|}~-@weird.io", "a1-b2@x-y.z-w.com", "1@2.com", "a@1.2.3.com",
    f"a@{LONG_LABEL}.com", f"a@{LONG_LABEL}.{LONG_LABEL}.{LONG_LABEL}.com",
    f"a@{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * 60}.fr",  # 247-character domain
    f"{'l' * 64}@example.com", f"{'l' * 65}@example.com", f"{'l' * 200}@example.com",
    f"{'l' * 64}@{'d' * 63}.{'e' * 63}.{'f' * 60}.com",  # 254 characters in all
    f"{'l' * 64}@{'d' * 63}.{'e' * 63}.{'f' * 61}.com",  # 255
    "info@example.com", "INFO@EXAMPLE.COM", "postmaster@x.org",
    # label and TLD edges
    f"a@{'a' * 64}.com", "a@-x.com", "a@x-.com", "a@x.-com", "a@x.com-", "a@x..com", "a@.x.com",
    "a@x.com.", "a@com", "a@x.c0m", "a@x.123", "a@x.c", "a@x.1a", "a@x.a1", "a@192.168.0.1",
    "a@ab--cd.com", "a@xn--bcher-kva.de", "a@xn--x.com", "a@XN--BCHER-KVA.DE", "a@x.xn--p1ai",
    "a@a--.com", "a@x---y.com", "a@x-y.com", "a@x.co-m", "a@x.-.com",
    # special-use and reserved names
    "a@localhost", "a@x.localhost", "a@x.local", "a@x.test", "a@test", "a@x.invalid",
    "a@x.onion", "a@x.arpa", "a@1.in-addr.arpa", "a@example.com", "a@localhost.com",
    "a@mytest.com", "a@x.testing", "a@local.host",
    # IP literals, quoted local parts, display names, comments
    "a@[192.168.0.1]", "a@[IPv6:::1]", "a@[ipv6:2001:db8::1]", '"john doe"@example.com',
    '"a@b"@example.com', '"ok"@example.com', "John <john@example.com>", "a(comment)@example.com",
    # invalid shapes
    "", "   ", "plain", "@example.com", "a@", "a@@b.com", "a b@c.com", "a..b@c.com", ".a@b.com",
    "a.@b.com", "a@b c.com", "a@b_c.com", "a@b,com", "a@b;c.com", "a\x00b@c.com", "a@b.com\x00",
    "a@b.com\nx", "\t a@b.com\t", "a@b.com>", "<a@b.com>", "a@b@c.com",
    # internationalised
    "jürgen@gmx.de", "ada@bücher.de", "ada@café-x.fr", "用户@例子.广告", "ada@例子.广告",
    "ada@xn--fsqu00a.xn--3lr804guic", "δοκιμή@παράδειγμα.δοκιμή", "ada@ÉXAMPLE.COM",
    "ada@bü cher.de", "a@b\u200b.com", "a@b\u00ad.com", "a@ｂｃ．ｃｏｍ", "a@b。com", "a@ß.de",
    "a@İ.com", "a@\u212a.com", "\u212aen@example.com", "a@1.xn--4dbc.com", "a@אב.1.com",
    "e\u0301@example.com", "a@e\u0301.com", "a@\u0301e.com", "\ud800@example.com",
    "a@\ud800.com", "a@b.\u0441om",
    # other types
    None, 42, 4.2, b"a@b.com", ["a@b.com"],
]


@pytest.mark.parametrize("value", CORPUS, ids=range(len(CORPUS)))
def test_corpus_matches_the_full_check(value: Any) -> None:
    """Each corpus address gets the full check's verdict, normalised address and reason."""
    _domain_problem.cache_clear()
    _same_as_reference(value)
    _same_as_reference(value)  # again, from the per-domain cache


def test_corpus_holds_both_verdicts_and_the_fast_path() -> None:
    """The corpus is not one-sided: it has valid and invalid addresses, and the LDH path takes
    some domains and leaves others (special-use, Punycode, R-LDH) to email_validator."""
    verdicts = {_reference(v)[0] for v in CORPUS}
    assert verdicts == {"ok", "rejected"}
    assert _plain_domain("example.com")
    assert not _plain_domain("x.localhost")
    assert not _plain_domain("xn--bcher-kva.de")
    assert not _plain_domain("ab--cd.com")


def test_special_use_names_are_read_from_email_validator(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A special-use name added to email_validator's list is refused by the fast path too."""
    monkeypatch.setattr(email_validator, "SPECIAL_USE_DOMAIN_NAMES",
                        [*email_validator.SPECIAL_USE_DOMAIN_NAMES, "internal"])
    _domain_problem.cache_clear()
    try:
        assert _reference("a@corp.internal")[0] == "rejected"
        _same_as_reference("a@corp.internal")
    finally:
        _domain_problem.cache_clear()


_LDH = string.ascii_lowercase + string.digits + "-"
_label = st.text(alphabet=_LDH, min_size=1, max_size=66)
_domain = st.lists(_label, min_size=1, max_size=5).map(".".join)
_local = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~.-\"@ ",
                 min_size=0, max_size=70)
_special = st.sampled_from([*email_validator.SPECIAL_USE_DOMAIN_NAMES, "com", "xn--p1ai", "a1"])


@settings(max_examples=1500, deadline=None)
@given(local=_local, domain=_domain)
@example(local="a", domain="a" * 63 + ".com")
@example(local="a", domain="-a.com")
def test_generated_ldh_addresses_match_the_full_check(local: str, domain: str) -> None:
    """Generated ASCII addresses (LDH labels of any length, hyphens anywhere, odd local parts)
    get the full check's verdict, address and reason."""
    _same_as_reference(f"{local}@{domain}")


@settings(max_examples=500, deadline=None)
@given(labels=st.lists(_label, min_size=0, max_size=3), tld=_special,
       upper=st.booleans(), pad=st.sampled_from(["", " ", "\t", "\n "]))
def test_generated_special_use_and_padded_addresses_match(labels: list[str], tld: str,
                                                          upper: bool, pad: str) -> None:
    """Generated domains under special-use, Punycode and numeric TLDs, upper-cased and padded,
    get the full check's verdict, address and reason."""
    address = f"{pad}ada@{'.'.join([*labels, tld])}{pad}"
    _same_as_reference(address.upper() if upper else address)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=40))
def test_generated_unicode_text_matches_the_full_check(text: str) -> None:
    """Any generated text (internationalised, control characters, surrogates) gets the full
    check's verdict, address and reason."""
    _same_as_reference(text)
    _same_as_reference(f"{text}@example.com")
    _same_as_reference(f"ada@{text}.com")
