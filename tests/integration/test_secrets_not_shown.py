"""No command prints a secret (issue 8, cases 6 and 7): the API token and database passwords in
every form a URL can carry them (user part, percent-encoded, ``?password=``, ``${VAR}``), at
``--log-level debug`` in JSON and console form, on success and on failure. A token that is not a
valid header value is a configuration error (exit 2) that never echoes it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from sync_service.__main__ import cli
from sync_service.testing.mailtrap.double import MailtrapDouble

TOKEN = "tok-51d0c8e2a7f94b36"
PASSWORD = "Pa55:w@rd/x+y"  # every URL encoding of it differs from the plain text
QUERY_PASSWORD = "qPw&d=7!k%z"
VAR_PASSWORD = "env-s3cret-Zq9"
CONFIG = """
[state]
url = "sqlite:///{state}"

[mailtrap]
poll_interval = 0.05

[[pipelines]]
name = "people"
lists = ["People"]

[pipelines.source]
connector = "sql"
url = "{source}"
table = "people"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping]
email = "email"
"""
COMMANDS = (("check",), ("plan", "people"), ("plan", "people", "--json"), ("sync",),
            ("status",), ("status", "--json"), ("rejects", "people"), ("backfill", "people"),
            ("retry", "people"), ("db", "upgrade"))


def _forms(secret: str) -> set[str]:
    """Every spelling of a secret that could reach the output."""
    return {secret, quote(secret, safe=""), quote(secret, safe=" +"), quote_plus(secret),
            repr(secret)[1:-1]}


def _source_urls(pg_url: str) -> dict[str, str]:
    """The source URL with its password written each way a user can write it."""
    url = make_url(pg_url)
    plain = url.render_as_string(hide_password=False)
    base, _, database = plain.rpartition("/")
    return {
        "user part, percent-encoded": url.set(password=PASSWORD).render_as_string(
            hide_password=False),
        "query parameter": f"{plain}?password={quote_plus(QUERY_PASSWORD)}",
        "${VAR}": base.replace("postgres@", "postgres:${CRM_PASSWORD}@") + "/" + database,
    }


@pytest.fixture
def served(double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> str:
    double.grant(TOKEN, 1001)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    monkeypatch.setenv("CRM_PASSWORD", VAR_PASSWORD)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return mailtrap_server


@pytest.fixture
def people(pg_url: str) -> str:
    """A PostgreSQL source with a few rows, one of them rejected (so `rejects` has output)."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, "
                             "updated_at TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO people VALUES (1, 'a@example.com', '2026-01-01'), "
                             "(2, 'not-an-email', '2026-01-02'), (3, 'c@example.com', NULL)"))
    engine.dispose()
    return pg_url


def _run(config: Path, *args: str, log_format: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "--log-level", "debug",
                                    "--log-format", log_format, *args], catch_exceptions=False)


@pytest.mark.postgres
@pytest.mark.parametrize("form", ["user part, percent-encoded", "query parameter", "${VAR}"])
def test_no_command_prints_the_token_or_a_password(form: str, people: str, served: str,
                                                   tmp_path: Path) -> None:
    """Every command at debug level, JSON and console, prints neither the token nor the source
    password in any of its encodings, however the URL carries it."""
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state.db",
                                    source=_source_urls(people)[form]))
    secrets = _forms(TOKEN) | _forms(PASSWORD) | _forms(QUERY_PASSWORD) | _forms(VAR_PASSWORD)
    outputs = []
    for args in COMMANDS:
        for log_format in ("json", "console"):
            result = _run(config, *args, log_format=log_format)
            assert result.exit_code in (0, 1), (args, result.output)
            outputs.append(result.output)
    text = "\n".join(outputs)
    assert "sql.check_ok" in text  # the log line that printed the query password before
    assert "people: sync succeeded" in text
    assert [s for s in secrets if s in text] == []


@pytest.mark.postgres
def test_a_failing_connection_does_not_print_the_password(served: str, pg_url: str,
                                                          tmp_path: Path) -> None:
    """An unreachable source, its URL carrying the password in the user part and as a query
    parameter: the error names the host, not the passwords."""
    url = make_url(pg_url).set(host="127.0.0.1", port=1, password=PASSWORD)
    source = f"{url.render_as_string(hide_password=False)}?sslpassword={QUERY_PASSWORD}"
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state.db", source=source))
    for args in (("check",), ("sync",), ("plan", "people")):
        result = _run(config, *args, log_format="json")
        assert result.exit_code == 1, result.output
        assert "127.0.0.1:1" in result.output
        assert [s for s in _forms(PASSWORD) | _forms(QUERY_PASSWORD) if s in result.output] == []


@pytest.mark.parametrize(("token", "what"), [
    ("tok-line\nbreak-9f3a", "a line break"),
    ("tök-non-ascii-7c1e", "non-ASCII characters"),
    ("tok with-space-55d", "white space"),
])
def test_a_token_that_is_no_header_value_is_a_config_error_never_echoed(
        token: str, what: str, served: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A token with a newline, non-ASCII or a space: exit 2 at once from `check` and `sync`,
    saying what is wrong with it, and not showing it (no retries, no traceback)."""
    monkeypatch.setenv("MAILTRAP_API_TOKEN", token)
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state.db", source="sqlite://"))
    for args in (("check",), ("sync",)):
        result = _run(config, *args, log_format="json")
        assert result.exit_code == 2, result.output
        assert f"MAILTRAP_API_TOKEN is not a valid HTTP header value: it contains {what}" in \
            " ".join(result.output.split())
        assert "Traceback" not in result.output
        assert "mailtrap.retry" not in result.output
        for part in token.split():  # each line or word of it, too
            assert len(part) < 6 or part not in result.output
        assert [s for s in _forms(token) if s in result.output] == []
