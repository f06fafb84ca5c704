"""The double's email check gives email-validator's verdict on every address, fast path or not."""

from __future__ import annotations

import random

import idna
from email_validator import EmailNotValidError, validate_email

from sync_service.testing.mailtrap.rules import is_valid_email

LOCALS = [
    "a", "Ann", "ann.lee", "ANN.LEE+tag", "o'brien", "x_y-z", "a!#$%&'*+-/=?^_`{|}~b",
    "info", "Postmaster", "1", "a" * 64, "a" * 65, "a" * 200,
    "", ".ann", "ann.", "an..n", "an n", "an,n", "an(n)", "an<n>", "an[n]", "an\\n", "an:n",
    "an;n", "an\x00n", "an\tn", '"ann"', '"an n"', '"a@b"', '"an\\"n"', "ann@", "@",
    "ñandú", "用户", "Ünïcödé.name", "e\u0301", "\u0301e", "a\u200bb", "a\u202eb", "ǆ",
]
DOMAINS = [
    "example.com", "EXAMPLE.COM", "mail.example.co.uk", "a.io", "x-y.org", "1.2.3.example.net",
    "ex_ample.com", "-example.com", "example-.com", "exa--mple.com", "ab--cd.com",
    "example..com", ".example.com", "example.com.", "example", "example.c0m", "example.123",
    "localhost", "example.local", "example.invalid", "example.test", "test", "x.onion",
    "example.arpa", "[127.0.0.1]", "[IPv6:::1]", "[example]", "exa mple.com", "exa\tmple.com",
    "b@example.com", "<example.com>", "", "example.com>", '"example".com',
    ("a" * 63) + ".com", ("a" * 64) + ".com", ".".join(["a" * 63] * 4)[:249] + ".com",
    ".".join(["a" * 63] * 4) + ".com",
    "bücher.de", "BÜCHER.de", "xn--bcher-kva.de", "XN--BCHER-KVA.DE", "xn--bcher.de",
    "xn--zz.com", "xn--4dbc.1.com", "1.xn--4dbc.com", "中国.cn", "例え.テスト", "пример.рф",
    "xn--e1afmkfd.xn--p1ai", "ex\u00adample.com", "exa\u200dmple.com", "example。com",
    "ｅｘａｍｐｌｅ.com", "⒈example.com", "ex\u0301ample.com", "\u0301example.com",
    idna.encode("中" * 20 + ".cn").decode(), idna.encode("中" * 40 + ".cn").decode(),
    ".".join([idna.encode("中" * 40).decode()] * 4) + ".cn",
]
ODD = [
    "", "@", "plain", "a@", "@example.com", "a@@example.com", "Ann <ann@example.com>",
    "<ann@example.com>", "ann@example.com ", " ann@example.com", "ann＠example.com",
    "ann﹫example.com", 'ann"@example.com', '"ann@example.com', "ann@example.com@example.com",
    "a\u0338@example.com", "a@\u0338example.com", "a<\u0338b@example.com",
]


def _reference(email: str) -> bool:
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _verdicts(emails: list[str]) -> tuple[dict[str, bool], list[tuple[str, bool, bool]]]:
    """The reference verdicts, and the addresses on which ``is_valid_email`` differs."""
    reference = {email: _reference(email) for email in emails}
    differ = [(e, is_valid_email(e), ok) for e, ok in reference.items() if is_valid_email(e) != ok]
    return reference, differ


def _corpus() -> list[str]:
    emails = [f"{local}@{domain}" for local in LOCALS for domain in DOMAINS] + ODD
    for domain in DOMAINS:  # both sides of the 254-byte limit, in every spelling of the domain
        room = 254 - 1 - len(domain)
        emails += ["a" * n + "@" + domain for n in range(max(1, room - 40), room + 3)]
    return emails


def test_corpus_verdicts_match_email_validator() -> None:
    """Valid, invalid, internationalised, length-boundary addresses: validate_email's verdict."""
    reference, differ = _verdicts(_corpus())
    assert sum(reference.values()) > 200  # the corpus exercises both verdicts
    assert sum(not ok for ok in reference.values()) > 200
    assert differ == []


def test_random_addresses_match_email_validator() -> None:
    """Seeded random mixes of awkward characters around an @: same verdict as validate_email."""
    rng = random.Random(20261202)
    alphabet = "aZ09.-_+@\"<> ()[]\\,;:!~ñ中\u0301\u200b。"
    emails = []
    for _ in range(3000):
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        domain = rng.choice([*DOMAINS[:30], "".join(rng.choice(alphabet) for _ in range(6))])
        emails.append(f"{local}@{domain}")
    assert _verdicts(emails)[1] == []


def test_domain_verdict_is_shared_but_length_is_per_address() -> None:
    """One domain, two addresses: the long one is refused for its length, the short one is not."""
    domain = idna.encode("中" * 20 + ".cn").decode()  # 63 UTF-8 bytes once decoded
    fits = "a" * (254 - 1 - 63) + "@" + domain
    too_long = "a" * (254 - 1 - 63 + 1) + "@" + domain  # fits as given, not once normalised
    assert len(too_long) <= 254
    assert (is_valid_email(fits), is_valid_email(too_long)) == (True, False)
    assert (_reference(fits), _reference(too_long)) == (True, False)
