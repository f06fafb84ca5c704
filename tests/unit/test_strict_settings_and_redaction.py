"""Strict settings and the one redaction (issue 8, cases 6, 7 and 13): values of the wrong type
are configuration errors naming the key, and secrets are hidden in every form they take."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from sync_service.errors import ConfigError
from sync_service.logging import redact, register_secret, register_url
from sync_service.settings import load_settings

BASE = """
lease_ttl = {lease_ttl}

[mailtrap]
timeout = {timeout}

[[pipelines]]
name = "p"
lists = [{lists}]
batch_size = {batch_size}

[pipelines.source]
connector = "sql"
url = "sqlite://"
table = "t"
key = "id"
cursor = "c"
lookback = {lookback}
fetch_size = {fetch_size}
"""
GOOD = {"lease_ttl": '"60s"', "timeout": "30", "lists": '"L", 7', "batch_size": "100",
        "lookback": '"5m"', "fetch_size": "10"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAILTRAP_API_TOKEN", "MAILTRAP_ACCOUNT_ID", "MAILTRAP_API_URL",
                 "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_WEB_LISTEN"):
        monkeypatch.delenv(name, raising=False)


def _load(tmp_path: Path, **changes: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(BASE.format(**{**GOOD, **changes}))
    load_settings(config)


def test_the_good_file_loads(tmp_path: Path) -> None:
    """The base file of these tests is valid, so each refusal below is the changed key's."""
    _load(tmp_path)


@pytest.mark.parametrize(("key", "value"), [
    ("batch_size", "true"), ("batch_size", "1.0"), ("batch_size", '"10"'),
    ("fetch_size", "true"), ("lists", "true"), ("lists", "1.0"), ("timeout", "true"),
    ("timeout", "inf"), ("timeout", "nan"), ("lease_ttl", "true"), ("lease_ttl", "inf"),
    ("lookback", "nan"), ("lookback", "true"), ("lookback", '"1_5"'), ("lookback", '"١٢s"'),
])
def test_values_of_the_wrong_type_are_configuration_errors(tmp_path: Path, key: str,
                                                           value: str) -> None:
    """Booleans, floats, text or non-finite numbers where another type goes: a ConfigError
    naming the key (never silently 1, 15 or infinity)."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, **{key: value})
    assert key in str(info.value)


def test_account_id_from_the_environment_is_read_as_a_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILTRAP_ACCOUNT_ID (text, as every environment variable) still works when strict; text
    that is not digits is refused."""
    monkeypatch.setenv("MAILTRAP_ACCOUNT_ID", "1001")
    config = tmp_path / "c.toml"
    config.write_text(BASE.format(**GOOD))
    assert load_settings(config).mailtrap.account_id == 1001
    monkeypatch.setenv("MAILTRAP_ACCOUNT_ID", "1_001")
    with pytest.raises(ConfigError, match="account_id"):
        load_settings(config)


def test_secret_variables_are_redacted_in_every_form(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A ${VAR} whose name says it is secret is hidden however it is written: plain,
    percent-encoded, quote_plus-encoded, escaped as repr shows it."""
    secret = "v@r:s3cret/+ \n"
    monkeypatch.setenv("CRM_DB_PASSWORD", secret)
    config = tmp_path / "c.toml"
    config.write_text(BASE.format(**GOOD).replace(
        'url = "sqlite://"', 'url = "postgresql+psycopg://crm@db/crm?password=${CRM_DB_PASSWORD}"'))
    load_settings(config)
    for form in (secret, quote(secret, safe=""), quote_plus(secret), repr(secret)[1:-1]):
        assert redact(f"before {form} after") == "before *** after"


@pytest.mark.parametrize("text", [
    "postgresql://crm:hunter22@db/crm",
    "postgresql://crm@db/crm?password=hunter22&sslmode=require",
    "mysql://crm@db/crm?sslpassword=hunter22",
    "host=db password=hunter22 dbname=crm",
    "https://api.example/x?token=hunter22",
    "{'password': 'x', 'api_key=hunter22'}",
])
def test_url_and_parameter_secrets_are_redacted_structurally(text: str) -> None:
    """Passwords in a URL's user part and secret-looking key=value parameters are hidden even
    when never registered."""
    shown = redact(text)
    assert "hunter22" not in shown
    assert "***" in shown


def test_an_unparsable_url_is_refused_without_its_parts(tmp_path: Path) -> None:
    """A source URL SQLAlchemy cannot parse is refused without echoing any part of it."""
    config = tmp_path / "c.toml"
    config.write_text(BASE.format(**GOOD).replace(
        'url = "sqlite://"', 'url = "postgresql://u:pw@db:s3cretport/crm"'))
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "is not a SQLAlchemy URL" in str(info.value)
    assert "s3cretport" not in str(info.value)


def test_a_registered_url_hides_its_password_everywhere() -> None:
    """Registering a URL hides its decoded password in any later text (e.g. a driver message)."""
    register_url("postgresql://crm:p%40ss%2Fw0rd@db/crm")
    assert redact("auth failed for p@ss/w0rd") == "auth failed for ***"
    register_secret("abc")  # too short to register: ordinary words are not blanked
    assert redact("abc def") == "abc def"
