"""HubSpot end to end: the real job reads the HubSpot double over HTTP into the Mailtrap double."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sync_service.__main__ import cli
from sync_service.connector import in_order
from sync_service.connectors.hubspot import HubSpotConnector, HubSpotSettings
from sync_service.models import Position, RunOutcome
from sync_service.testing.hubspot.double import DEFAULT_TOKEN, SEARCH_CAP, HubSpotDouble, millis
from sync_service.testing.mailtrap.double import MailtrapDouble
from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.server import serve_app
from tests.support.source_pipeline import SourcePipeline


@pytest.fixture
def hubspot() -> HubSpotDouble:
    """A HubSpot double with no contacts."""
    return HubSpotDouble()


@pytest.fixture
def hubspot_url(hubspot: HubSpotDouble, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The HubSpot double served over HTTP, its token in HUBSPOT_TOKEN."""
    monkeypatch.setenv("HUBSPOT_TOKEN", DEFAULT_TOKEN)
    with serve_app(hubspot.app, "hubspot") as url:
        yield url


def _pipeline(tmp_path: Path, double: MailtrapDouble, url: str, **source: Any) -> SourcePipeline:
    raw = {"connector": "hubspot", "token": "${HUBSPOT_TOKEN}", "api_url": url,
           "properties": ["email", "firstname", "lastname"], "search_rate": "200/1s",
           "rate": "500/1s", "retry_initial": 0.05, **source}
    return SourcePipeline(double, raw, f"sqlite:///{tmp_path}/state.db",
                          fields={"first_name": "firstname", "last_name": "lastname"})


def _crm_view(hubspot: HubSpotDouble) -> dict[str, dict[str, Any]]:
    """email → fields, as Mailtrap should hold the active HubSpot contacts."""
    return {str(p["email"]).lower(): {"first_name": p.get("firstname") or "",
                                      "last_name": p.get("lastname") or ""}
            for p in hubspot.contacts().values() if p.get("email")}


def test_sync_twice_then_change_delete_and_email_change(
        tmp_path: Path, double: MailtrapDouble, hubspot: HubSpotDouble, hubspot_url: str) -> None:
    """Second run sends nothing; a change, an archive and an email change leave both equal."""
    ids = [hubspot.add(email=f"p{n}@example.com",
                       properties={"firstname": f"F{n}", "lastname": f"L{n}"})
           for n in range(40)]
    pipeline = _pipeline(tmp_path, double, hubspot_url)
    try:
        first = pipeline.run()
        assert first.outcome is RunOutcome.SUCCEEDED, first.error
        assert pipeline.mailtrap_view() == _crm_view(hubspot)
        sent = pipeline.sent()
        second = pipeline.run()
        assert second.outcome is RunOutcome.SUCCEEDED, second.error
        assert pipeline.sent() == sent
        hubspot.update(ids[3], firstname="Changed")
        hubspot.archive(ids[5])
        hubspot.update(ids[7], email="moved@example.com")
        third = pipeline.run()
        assert third.outcome is RunOutcome.SUCCEEDED, third.error
        assert pipeline.mailtrap_view() == _crm_view(hubspot)
        assert "p5@example.com" not in pipeline.mailtrap_view()
        assert pipeline.mailtrap_view()["moved@example.com"]["first_name"] == "F7"
    finally:
        pipeline.close()


def test_many_contacts_sharing_one_timestamp_are_read_once_within_the_cap(
        tmp_path: Path, double: MailtrapDouble, hubspot: HubSpotDouble, hubspot_url: str) -> None:
    """25,000 new contacts, 12,000 on one lastmodifieddate: each read once, no 400 from the cap."""
    hubspot.add(email="seed@example.com")
    pipeline = _pipeline(tmp_path, double, hubspot_url, lookback="0", page_size=200)
    try:
        assert pipeline.run().outcome is RunOutcome.SUCCEEDED
        base = millis(datetime.now(UTC) + timedelta(seconds=5))
        for n in range(6_500):
            hubspot.add_many(1, at=base + n)
        hubspot.add_many(12_000, at=base + 3_000)  # ties in the middle of the others
        for n in range(6_500):
            hubspot.add_many(1, at=base + 7_000 + n)
        result = pipeline.run()
        assert result.outcome is RunOutcome.SUCCEEDED, result.error
        assert result.counts["read"] == 25_000
        assert len(pipeline.mailtrap_view()) == 25_001
        searches = [r for r in hubspot.requests() if r.path.endswith("/search")]
        assert all(r.status == 200 for r in searches)
        assert all(int(r.body.get("after") or 0) + r.body["limit"] <= SEARCH_CAP
                   for r in searches)
    finally:
        pipeline.close()


def test_rate_limit_with_policy_name_backs_off_and_resumes(
        tmp_path: Path, double: MailtrapDouble, hubspot: HubSpotDouble, hubspot_url: str) -> None:
    """429s with policyName TEN_SECONDLY_ROLLING mid-read are waited out; the read completes."""
    for n in range(30):
        hubspot.add(email=f"r{n}@example.com")
    pipeline = _pipeline(tmp_path, double, hubspot_url, page_size=10)
    try:
        hubspot.rate_limit(3, "TEN_SECONDLY_ROLLING")
        result = pipeline.run()
        assert result.outcome is RunOutcome.SUCCEEDED, result.error
        assert [r.status for r in hubspot.requests()].count(429) == 3
        assert len(pipeline.mailtrap_view()) == 30
    finally:
        pipeline.close()


def test_daily_limit_fails_the_run_with_hubspots_words(
        tmp_path: Path, double: MailtrapDouble, hubspot: HubSpotDouble, hubspot_url: str) -> None:
    """A 429 with policyName DAILY is not waited out: the run fails naming the daily limit."""
    hubspot.add(email="d@example.com")
    pipeline = _pipeline(tmp_path, double, hubspot_url)
    try:
        hubspot.rate_limit(1, "DAILY")
        result = pipeline.run()
        assert result.outcome is RunOutcome.FAILED
        assert "daily limit" in (result.error or "")
        assert [r.status for r in hubspot.requests()].count(429) == 1
    finally:
        pipeline.close()


CLI_TOKEN = "tok-hubspot-cli-41"


@pytest.fixture
def cli_config(tmp_path: Path, double: MailtrapDouble, mailtrap_server: str, hubspot_url: str,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file reading the HubSpot double, the Mailtrap double served for the CLI."""
    double.grant(CLI_TOKEN, 1001)
    double.add_field("first_name", "text")
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", CLI_TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(f"""
[state]
url = "sqlite:///{tmp_path}/state.db"

[[pipelines]]
name = "hubspot"
lists = ["CRM"]

[pipelines.source]
connector = "hubspot"
token = "${{HUBSPOT_TOKEN}}"
api_url = "{hubspot_url}"
properties = ["email", "firstname"]

[pipelines.mapping]
email = "email"
fields = {{ first_name = "firstname" }}
""")
    return config


def test_check_shows_a_sample_of_mapped_contacts(cli_config: Path,
                                                 hubspot: HubSpotDouble) -> None:
    """`check` reads the token's contacts and prints the first ones as the contacts they become."""
    hubspot.add(email="Ada@Example.com", properties={"firstname": "Ada"})
    hubspot.add(email="not an address", properties={"firstname": "Bad"})
    result = CliRunner().invoke(cli, ["--config", str(cli_config), "check"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "hubspot: source" in result.output
    assert "ada@example.com (first_name=Ada)" in result.output
    assert "not sendable" in result.output


def test_check_with_a_refused_token_exits_2_naming_it(cli_config: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A token HubSpot refuses fails `check` with exit code 2 and a line naming source.token."""
    monkeypatch.setenv("HUBSPOT_TOKEN", "pat-na1-revoked")
    result = CliRunner().invoke(cli, ["--config", str(cli_config), "check"],
                                catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "source.token: HubSpot refused the token" in result.output
    assert "pat-na1-revoked" not in result.output


def _connector(hubspot: HubSpotDouble, page_size: int) -> HubSpotConnector:
    settings = HubSpotSettings(connector="hubspot", token=DEFAULT_TOKEN, lookback="0",
                               api_url="https://hubspot.test", page_size=page_size,
                               search_rate="1000/1s", rate="1000/1s")
    return HubSpotConnector(settings, transport=InProcessTransport(hubspot.app))


def test_search_reads_ties_across_pages_once_and_resumes_from_every_position(
        hubspot: HubSpotDouble) -> None:
    """Through search: 12 of 30 contacts on one timestamp, 5 a page; each once, any watermark."""
    base = millis(datetime.now(UTC) - timedelta(hours=1))
    for n in range(9):
        hubspot.add(email=f"a{n}@example.com", at=base + n)
    tied = [hubspot.add(email=f"t{n}@example.com", at=base + 20) for n in range(12)]
    for n in range(9):
        hubspot.add(email=f"z{n}@example.com", at=base + 30 + n)
    hubspot.archive(tied[4], at=base + 25)
    origin = Position((datetime.fromtimestamp((base - 1) / 1000, UTC), 1), 0)
    connector = _connector(hubspot, page_size=5)
    try:
        full = list(in_order(connector.read(origin), "hubspot"))
        assert sorted(r.key for r in full) == sorted([*hubspot.contacts(), tied[4]])
        assert [r.key for r in full if r.deleted] == [tied[4]]
        for index, record in enumerate(full):
            rest = list(in_order(connector.read(record.position), "hubspot"))
            assert [r.key for r in rest] == [r.key for r in full[index + 1:]]
    finally:
        connector.close()


@pytest.mark.parametrize(("lookback", "caught"), [("5m", True), ("0", False)])
def test_lookback_catches_an_edit_search_indexed_late(
        lookback: str, caught: bool, *, tmp_path: Path, double: MailtrapDouble,
        hubspot: HubSpotDouble, hubspot_url: str) -> None:
    """An edit that reaches search after a later one is read by the next run within lookback
    (and, as the control shows, missed without one)."""
    ids = [hubspot.add(email=f"l{n}@example.com", properties={"firstname": f"F{n}"})
           for n in range(5)]
    pipeline = _pipeline(tmp_path, double, hubspot_url, lookback=lookback)
    try:
        assert pipeline.run().outcome is RunOutcome.SUCCEEDED
        hubspot.update(ids[1], firstname="Late")
        hubspot.hold_from_search(ids[1])
        hubspot.update(ids[2], firstname="Quick")
        assert pipeline.run().outcome is RunOutcome.SUCCEEDED
        view = pipeline.mailtrap_view()
        assert (view["l1@example.com"]["first_name"], view["l2@example.com"]["first_name"]) == (
            "F1", "Quick")
        hubspot.index_all()
        assert pipeline.run().outcome is RunOutcome.SUCCEEDED
        late = pipeline.mailtrap_view()["l1@example.com"]["first_name"]
        assert late == ("Late" if caught else "F1")
    finally:
        pipeline.close()
