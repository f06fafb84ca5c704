"""The Salesforce connector against the in-process Salesforce double: settings, OAuth flows,
query paging and the faults Salesforce answers with."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError
from structlog.testing import capture_logs

from sync_service.connectors.salesforce import SalesforceConnector, SalesforceSettings, parse_stamp
from sync_service.errors import ConfigError, SourceError
from sync_service.models import Position
from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.salesforce import SalesforceDouble

T0 = datetime(2026, 5, 1, tzinfo=UTC)
LOGIN = "https://acme.my.salesforce.com"


def _settings(**overrides: Any) -> SalesforceSettings:
    values: dict[str, Any] = {"connector": "salesforce", "login_url": LOGIN,
                              "client_id": "test-client-id",
                              "client_secret": "test-client-secret"}
    values.update(overrides)
    return SalesforceSettings.model_validate({k: v for k, v in values.items() if v is not None})


@pytest.fixture
def sf() -> SalesforceDouble:
    return SalesforceDouble(batch_size=3)


@pytest.fixture
def connect(sf: SalesforceDouble) -> Iterator[Any]:
    made: list[SalesforceConnector] = []

    def make(**overrides: Any) -> SalesforceConnector:
        connector = SalesforceConnector(_settings(**overrides),
                                        transport=InProcessTransport(sf.app),
                                        retry_initial=0.01)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


def _pem_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_settings_need_one_complete_flow() -> None:
    """No secret and no key, both, or a key without username: refused with the reason."""
    with pytest.raises(ValidationError, match="client_secret"):
        _settings(client_secret=None)
    with pytest.raises(ValidationError, match="not both"):
        _settings(private_key="k", username="u")
    with pytest.raises(ValidationError, match="needs `username`"):
        _settings(client_secret=None, private_key="k")
    with pytest.raises(ValidationError, match="not Salesforce field API names"):
        _settings(fields=["Email", "Email, Name FROM User --"])
    with pytest.raises(ValidationError, match="relationship fields are not supported"):
        _settings(fields=["Email", "Account.Name"])
    with pytest.raises(ValidationError, match="needs the org's My Domain"):
        _settings(login_url="https://login.salesforce.com")
    assert _settings().flow == "client_credentials"
    sandbox = _settings(client_secret=None, private_key="k", username="u",
                        login_url="https://acme--dev.sandbox.my.salesforce.com")
    assert sandbox.jwt_audience == "https://test.salesforce.com"


def test_secrets_stay_out_of_the_settings_repr() -> None:
    """client_secret and private_key never show in a repr (logs, tracebacks)."""
    text = repr(_settings(client_secret="s3cr3t-value"))
    assert "s3cr3t-value" not in text


def test_jwt_bearer_flow_with_a_key_file(sf: SalesforceDouble, connect: Any,
                                         tmp_path: Path) -> None:
    """A JWT signed with the key file is accepted; the read goes through with that token."""
    private, public = _pem_pair()
    sf.public_key = public
    key_file = tmp_path / "server.key"
    key_file.write_bytes(private)
    sf.add(Email="a@example.com", modstamp=T0)
    connector = connect(client_secret=None, username=sf.username,
                        private_key_file=str(key_file))
    connector.check()
    assert [r.values["Email"] for r in connector.read(None)] == ["a@example.com"]


def test_jwt_bearer_flow_refused_for_another_key(sf: SalesforceDouble, connect: Any) -> None:
    """A JWT signed by a key the connected app does not hold: ConfigError with invalid_grant."""
    _, public = _pem_pair()
    other, _ = _pem_pair()
    sf.public_key = public
    connector = connect(client_secret=None, username=sf.username, private_key=other.decode())
    with pytest.raises(ConfigError, match="invalid_grant"):
        connector.check()


def test_unreadable_key_is_a_config_error(connect: Any) -> None:
    """A private key that is not PEM fails at start-up naming the setting."""
    with pytest.raises(ConfigError, match=r"source\.private_key"):
        connect(client_secret=None, username="u", private_key="not a key")


def test_ties_across_pages_are_read_once_in_id_order(sf: SalesforceDouble,
                                                     connect: Any) -> None:
    """Ten contacts sharing a SystemModstamp, 3 a page: each once, by Id, resumable inside."""
    ids = [sf.add(Email=f"t{n}@example.com", modstamp=T0) for n in range(10)]
    records = list(connect().read(None))
    assert [r.key for r in records] == sorted(ids)
    rest = list(connect().read(records[4].position))
    assert [r.key for r in rest] == sorted(ids)[5:]


def test_deleted_records_come_with_their_values(sf: SalesforceDouble, connect: Any) -> None:
    """A contact in the recycle bin is read through queryAll as deleted, with its Email."""
    kept = sf.add(Email="kept@example.com", modstamp=T0)
    gone = sf.add(Email="gone@example.com", modstamp=T0)
    sf.delete(gone, modstamp=T0 + timedelta(seconds=5))
    records = list(connect().read(Position(T0, kept)))
    assert [(r.key, r.deleted, r.values["Email"]) for r in records] == [
        (gone, True, "gone@example.com")]


def test_expired_query_locator_restarts_after_the_last_record(sf: SalesforceDouble,
                                                              connect: Any) -> None:
    """INVALID_QUERY_LOCATOR mid-read: the query is run again after the last record yielded."""
    ids = [sf.add(Email=f"l{n}@example.com", modstamp=T0 + timedelta(seconds=n))
           for n in range(8)]
    seen = []
    for record in connect().read(None):
        seen.append(record.key)
        if len(seen) == 3:
            sf._cursors.clear()  # Salesforce forgot the cursor (15 minutes idle)
    assert seen == ids
    assert len([r for r in sf.requests() if r.path.endswith("/queryAll")]) == 2


def test_watermark_from_the_state_store_as_text(sf: SalesforceDouble, connect: Any) -> None:
    """A watermark whose cursor is Salesforce's text form resumes like the datetime."""
    ids = [sf.add(Email=f"w{n}@example.com", modstamp=T0 + timedelta(seconds=n))
           for n in range(4)]
    rest = list(connect().read(Position("2026-05-01T00:00:01.000+0000", ids[1])))
    assert [r.key for r in rest] == ids[2:]
    with pytest.raises(Exception, match="not a SystemModstamp"):
        list(connect().read(Position(42, ids[1])))


def test_parse_stamp_reads_salesforce_datetimes() -> None:
    """``+0000`` offsets and milliseconds parse to aware UTC datetimes."""
    assert parse_stamp("2026-05-01T02:03:04.500+0200") == datetime(
        2026, 5, 1, 0, 3, 4, 500000, tzinfo=UTC)


def test_lookback_rereads_the_window_to_catch_late_commits(sf: SalesforceDouble,
                                                          connect: Any) -> None:
    """A record stamped before the watermark but committed after it is read with a lookback."""
    seen = sf.add(Email="seen@example.com", modstamp=T0 + timedelta(seconds=5))
    watermark = Position(T0 + timedelta(seconds=5), seen)
    late = sf.add(Email="late@example.com", modstamp=T0 + timedelta(seconds=3))
    assert list(connect().read(watermark)) == []
    again = [r.key for r in connect(lookback="5s").read(watermark)]
    assert again == [late, seen]


def test_high_api_usage_is_warned_once(sf: SalesforceDouble, connect: Any) -> None:
    """At 90 % of the org's daily requests, one salesforce.api_usage_high warning is logged."""
    sf.add(Email="a@example.com", modstamp=T0)
    sf.api_limit, sf.api_used = 100, 95
    connector = connect()
    with capture_logs() as logs:
        connector.check()
        list(connector.read(None))
    warnings = [e for e in logs if e["event"] == "salesforce.api_usage_high"]
    assert [(w["used"], w["max"]) for w in warnings] == [(96, 100)]
    assert connector.describe().endswith("api-usage=97/100")


def test_a_record_with_a_bad_systemmodstamp_fails_the_read_naming_it(
        sf: SalesforceDouble, connect: Any) -> None:
    """An answer whose SystemModstamp is not a dateTime stops the read with the record's Id."""
    sf.add(Email="a@example.com", modstamp=T0)
    bad = sf.add(Email="b@example.com", modstamp=T0 + timedelta(seconds=1))
    original = sf.run_query

    def corrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = original(*args, **kwargs)
        for record in body["records"]:
            if record["Id"] == bad:
                record["SystemModstamp"] = "yesterday"
        return body

    sf.run_query = corrupted  # type: ignore[method-assign]
    with pytest.raises(SourceError, match=f"{bad}: SystemModstamp 'yesterday'") as raised:
        list(connect().read(None))
    assert "not a dateTime" in str(raised.value)
