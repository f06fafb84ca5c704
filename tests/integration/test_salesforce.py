"""The Salesforce connector driven through the CLI: the Salesforce and Mailtrap doubles served
on local ports, a real SQLite state store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from sync_service.testing.salesforce import SalesforceDouble
from sync_service.testing.server import serve_app

T0 = datetime(2026, 4, 1, 8, 0, 0, tzinfo=UTC)
CONFIG = """
[state]
url = "sqlite:///{state}"

[mailtrap]
poll_interval = 0.02

[[pipelines]]
name = "contacts"
lists = ["Customers"]

[pipelines.source]
connector = "salesforce"
login_url = "{login_url}"
client_id = "${{SF_CLIENT_ID}}"
client_secret = "${{SF_CLIENT_SECRET}}"
object = "Contact"
fields = {fields}
max_retries = 4

[pipelines.mapping]
email = "Email"

[pipelines.mapping.fields]
first_name = "FirstName"
last_name = "LastName"
"""
FIELDS = '["Email", "FirstName", "LastName"]'


@pytest.fixture
def sf() -> SalesforceDouble:
    """A Salesforce org whose queries answer 4 records a page, so that reads cross pages."""
    return SalesforceDouble(batch_size=4)


@pytest.fixture
def config(tmp_path: Path, sf: SalesforceDouble, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Both doubles served, the environment pointing at them, a config file for the pipeline."""
    for tag in ("first_name", "last_name"):
        double.add_field(tag, "text")
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("SF_CLIENT_ID", sf.client_id)
    monkeypatch.setenv("SF_CLIENT_SECRET", sf.client_secret)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with serve_app(sf.app, "salesforce") as sf_url:
        path = tmp_path / "mailtrap-sync.toml"
        path.write_text(CONFIG.format(state=tmp_path / "state.db", login_url=sf_url,
                                      fields=FIELDS))
        yield path


def _cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def _seed(sf: SalesforceDouble, count: int) -> list[str]:
    """``count`` contacts; every three share one SystemModstamp (ties across pages)."""
    return [sf.add("Contact", Email=f"Person{n}@Example.com", FirstName=f"First{n}",
                   LastName=f"Last{n}", modstamp=T0 + timedelta(seconds=n // 3))
            for n in range(count)]


def _crm_view(sf: SalesforceDouble) -> dict[str, dict[str, Any]]:
    return {r["Email"].lower(): {"first_name": r["FirstName"] or "",
                                 "last_name": r["LastName"] or ""}
            for r in sf.records("Contact") if r["Email"]}


def _listed(double: MailtrapDouble) -> dict[str, dict[str, Any]]:
    """The contacts in the pipeline's list, with their fields."""
    list_id = next(i for i, name in double.lists().items() if name == "Customers")
    return {email: dict(c.fields) for email, c in double.contacts().items()
            if list_id in c.list_ids}


def test_sync_twice_then_change_delete_and_email_change(config: Path, sf: SalesforceDouble,
                                                        double: MailtrapDouble) -> None:
    """Mailtrap ends equal to Salesforce; a second run sends nothing; changes and deletions
    (seen through queryAll) and an email change follow."""
    ids = _seed(sf, 23)
    first = _cli(config, "sync")
    assert first.exit_code == 0, first.output
    assert _listed(double) == _crm_view(sf)
    imports = len(double.imports())

    second = _cli(config, "sync")
    assert second.exit_code == 0, second.output
    assert len(double.imports()) == imports  # nothing to send

    sf.update(ids[4], FirstName="Renamed")
    sf.delete(ids[7])
    sf.update(ids[11], Email="moved@example.com")
    third = _cli(config, "sync")
    assert third.exit_code == 0, third.output
    assert _listed(double) == _crm_view(sf)
    assert "person7@example.com" not in _listed(double)
    assert "person11@example.com" not in _listed(double)


def test_token_expired_mid_read_is_renewed_and_the_read_goes_on(
        config: Path, sf: SalesforceDouble, double: MailtrapDouble) -> None:
    """INVALID_SESSION_ID on the third page: a new token, the same page asked again, no
    restart of the query, and every contact synced."""
    _seed(sf, 20)
    # The list exists, so the run opens the source once (a missing list makes it check the
    # source first, with a connection and a token of its own).
    double.add_list("Customers")
    sf.expire_next_token_after(3)  # check's query and two pages of the read, then it dies
    result = _cli(config, "sync")
    assert result.exit_code == 0, result.output
    assert _listed(double) == _crm_view(sf)
    log = [(r.method, r.path, r.status) for r in sf.requests()]
    expired = next(i for i, entry in enumerate(log) if entry[2] == 401)
    assert "/queryAll/" in log[expired][1]  # a nextRecordsUrl page, not a new query
    assert log[expired + 1] == ("POST", "/services/oauth2/token", 200)
    assert log[expired + 2] == (log[expired][0], log[expired][1], 200)  # the same page again
    assert len([entry for entry in log if entry[1].endswith("/queryAll")]) == 1


def test_request_limit_exceeded_backs_off_and_resumes(config: Path, sf: SalesforceDouble,
                                                      double: MailtrapDouble) -> None:
    """Two 403 REQUEST_LIMIT_EXCEEDED mid-read are waited out; the same page is read again."""
    _seed(sf, 15)
    double.add_list("Customers")  # the run opens the source once (see above)
    sf.limit_exceeded(2, after=3)  # check's query and two pages pass, then two refusals
    result = _cli(config, "sync")
    assert result.exit_code == 0, result.output
    assert _listed(double) == _crm_view(sf)
    statuses = [(r.path, r.status) for r in sf.requests() if r.path.startswith("/services/data")]
    refused = [i for i, (_, status) in enumerate(statuses) if status == 403]
    assert len(refused) == 2
    assert statuses[refused[-1] + 1] == (statuses[refused[0]][0], 200)


def test_check_shows_api_usage(config: Path, sf: SalesforceDouble) -> None:
    """`check` passes and shows Salesforce's Sforce-Limit-Info."""
    _seed(sf, 3)
    result = _cli(config, "check")
    assert result.exit_code == 0, result.output
    assert "api-usage=" in result.output


def test_bad_field_name_fails_check_with_salesforce_message(config: Path,
                                                            sf: SalesforceDouble) -> None:
    """A field Contact does not have: `check` exits 2 quoting Salesforce's INVALID_FIELD text."""
    config.write_text(config.read_text().replace(FIELDS, '["Email", "FirstName", "Emale"]'))
    result = _cli(config, "check")
    assert result.exit_code == 2, result.output
    assert "INVALID_FIELD" in result.output
    assert "No such column 'Emale' on entity 'Contact'" in result.output


def test_malformed_where_fails_check_with_salesforce_message(config: Path,
                                                             sf: SalesforceDouble) -> None:
    """A `where` that is not SOQL: `check` exits 2 with Salesforce's MALFORMED_QUERY text."""
    config.write_text(config.read_text().replace(
        "max_retries = 4", "max_retries = 4\nwhere = \"LastName = \""))
    result = _cli(config, "check")
    assert result.exit_code == 2, result.output
    assert "MALFORMED_QUERY" in result.output
    assert "unexpected token" in result.output


def test_wrong_client_secret_fails_check_and_sync(config: Path, sf: SalesforceDouble,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret the token endpoint refuses: `check` and `sync` exit 2, both naming
    Salesforce's invalid_client and never printing the secret."""
    monkeypatch.setenv("SF_CLIENT_SECRET", "wrong-secret-4b1c")
    checked = _cli(config, "check")
    assert checked.exit_code == 2, checked.output
    synced = _cli(config, "sync")
    assert synced.exit_code == 2, synced.output  # a configuration error found while running
    for result in (checked, synced):
        assert "invalid_client" in result.output
        assert "wrong-secret-4b1c" not in result.output


def test_plan_and_retry_of_a_rejected_contact(config: Path, sf: SalesforceDouble,
                                              double: MailtrapDouble) -> None:
    """`plan` counts without sending; a contact with a bad Email is rejected, and once fixed
    in Salesforce `retry` re-reads it by Id (fetch) and sends it."""
    ids = _seed(sf, 4)
    sf.update(ids[2], Email="not-an-address")
    planned = _cli(config, "plan", "contacts")
    assert planned.exit_code == 0, planned.output
    assert double.imports() == []
    assert _cli(config, "sync").exit_code == 0
    assert "person2@example.com" not in double.contacts()
    rejects = _cli(config, "rejects", "contacts", "--json")
    assert ids[2] in rejects.output
    sf.update(ids[2], Email="person2@example.com")
    retried = _cli(config, "retry", "contacts")
    assert retried.exit_code == 0, retried.output
    assert _listed(double) == _crm_view(sf)
    fetched = [r.query for r in sf.requests() if "Id+IN" in r.query or "Id%20IN" in r.query]
    assert fetched, "retry re-reads the rejected contact by Id"


def test_jwt_bearer_flow_with_the_key_from_the_environment(
        config: Path, sf: SalesforceDouble, double: MailtrapDouble,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The JWT-bearer flow with the PEM key in ${SF_PRIVATE_KEY}: the sync goes through, and
    the key never shows in the output."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    sf.public_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv("SF_PRIVATE_KEY", pem)
    config.write_text(config.read_text().replace(
        'client_secret = "${SF_CLIENT_SECRET}"',
        f'username = "{sf.username}"\nprivate_key = "${{SF_PRIVATE_KEY}}"'))
    _seed(sf, 5)
    result = _cli(config, "sync")
    assert result.exit_code == 0, result.output
    assert _listed(double) == _crm_view(sf)
    assert "PRIVATE KEY" not in result.output
