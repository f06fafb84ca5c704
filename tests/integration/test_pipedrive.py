"""The Pipedrive connector driven through the CLI: the Pipedrive and Mailtrap doubles served on
local ports, a real SQLite state store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from sync_service.testing.pipedrive import PipedriveDouble
from sync_service.testing.server import serve_app

T0 = datetime(2026, 4, 1, 8, 0, 0, tzinfo=UTC)
CONFIG = """
[state]
url = "sqlite:///{state}"

[mailtrap]
poll_interval = 0.02

[[pipelines]]
name = "persons"
lists = ["Customers"]

[pipelines.source]
connector = "pipedrive"
api_url = "{api_url}"
token = "${{PIPEDRIVE_TOKEN}}"
fields = {fields}
page_size = 3
max_retries = 4

[pipelines.mapping]
email = "email"

[pipelines.mapping.fields]
first_name = "first_name"
last_name = "last_name"
plan = "Plan tier"
"""
FIELDS = '["first_name", "last_name", "Plan tier"]'


@pytest.fixture
def pd() -> PipedriveDouble:
    """A Pipedrive company with a custom "Plan tier" field."""
    found = PipedriveDouble()
    found.add_custom_field("Lead score", "double")
    found.add_custom_field("Plan tier", "enum", ["Free", "Pro", "Enterprise"])
    return found


@pytest.fixture
def config(tmp_path: Path, pd: PipedriveDouble, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Both doubles served, the environment pointing at them, a config file for the pipeline."""
    for tag in ("first_name", "last_name", "plan"):
        double.add_field(tag, "text")
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("PIPEDRIVE_TOKEN", pd.token)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with serve_app(pd.app, "pipedrive") as api_url:
        path = tmp_path / "mailtrap-sync.toml"
        path.write_text(CONFIG.format(state=tmp_path / "state.db", api_url=api_url,
                                      fields=FIELDS))
        yield path


def _cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def _plan_code(pd: PipedriveDouble) -> str:
    return pd.custom_field_code("Plan tier")


def _seed(pd: PipedriveDouble, count: int) -> list[int]:
    """``count`` persons; every four share one update_time (ties across pages of 3)."""
    plan = _plan_code(pd)
    return [pd.add(first_name=f"First{n}", last_name=f"Last{n}",
                   emails=[f"Person{n}@Example.com"], custom={plan: 1 + n % 3},
                   at=T0 + timedelta(seconds=n // 4))
            for n in range(count)]


def _crm_view(pd: PipedriveDouble) -> dict[str, dict[str, Any]]:
    labels = {1: "Free", 2: "Pro", 3: "Enterprise"}
    plan = _plan_code(pd)
    view = {}
    for person in pd.persons():
        primary = next((e["value"] for e in person["emails"] if e["primary"]), None)
        if primary:
            view[primary.lower()] = {
                "first_name": person["first_name"] or "", "last_name": person["last_name"] or "",
                "plan": labels.get(person["custom_fields"].get(plan), "")}
    return view


def _listed(double: MailtrapDouble) -> dict[str, dict[str, Any]]:
    list_id = next(i for i, name in double.lists().items() if name == "Customers")
    return {email: dict(c.fields) for email, c in double.contacts().items()
            if list_id in c.list_ids}


def test_sync_twice_then_change_delete_and_email_change(config: Path, pd: PipedriveDouble,
                                                        double: MailtrapDouble) -> None:
    """Mailtrap ends equal to Pipedrive; a second run sends nothing; a change, a deletion
    (found through recents) and a new primary address follow."""
    ids = _seed(pd, 17)
    first = _cli(config, "sync")
    assert first.exit_code == 0, first.output
    assert _listed(double) == _crm_view(pd)
    imports = len(double.imports())

    second = _cli(config, "sync")
    assert second.exit_code == 0, second.output
    assert len(double.imports()) == imports  # nothing to send

    pd.update(ids[2], first_name="Renamed", custom={_plan_code(pd): 3})
    pd.delete(ids[5])
    pd.update(ids[9], emails=["old9@example.com", {"value": "moved@example.com",
                                                    "primary": True}])
    third = _cli(config, "sync")
    assert third.exit_code == 0, third.output
    assert _listed(double) == _crm_view(pd)
    assert _listed(double)["person2@example.com"] == {
        "first_name": "Renamed", "last_name": "Last2", "plan": "Enterprise"}
    assert "person5@example.com" not in _listed(double)
    assert "person9@example.com" not in _listed(double)
    assert "moved@example.com" in _listed(double)


def test_person_with_three_addresses_syncs_the_primary(config: Path, pd: PipedriveDouble,
                                                       double: MailtrapDouble) -> None:
    """Of three addresses, the one flagged primary (not the first) is the contact's email."""
    pd.add(first_name="Tri", last_name="Ple", at=T0, emails=[
        {"value": "work@example.com", "primary": False, "label": "work"},
        {"value": "Main@Example.com", "primary": True, "label": "home"},
        {"value": "other@example.com", "primary": False, "label": "other"}])
    result = _cli(config, "sync")
    assert result.exit_code == 0, result.output
    assert set(double.contacts()) == {"main@example.com"}


def test_custom_field_is_mapped_by_its_name(config: Path, pd: PipedriveDouble,
                                            double: MailtrapDouble) -> None:
    """"Plan tier" is found by name among the custom fields, and its option label is sent."""
    pd.add(first_name="Ann", at=T0, emails=["ann@example.com"],
           custom={_plan_code(pd): 2})
    result = _cli(config, "sync")
    assert result.exit_code == 0, result.output
    contact = double.contact("ann@example.com")
    assert contact is not None
    assert contact.fields["plan"] == "Pro"
    person_reads = [r.params for r in pd.requests()
                    if r.path == "/api/v2/persons" and "sort_by" in r.params]
    assert person_reads
    assert all(p.get("custom_fields") == _plan_code(pd) for p in person_reads)


def test_rate_limited_reads_back_off_and_resume(config: Path, pd: PipedriveDouble,
                                                double: MailtrapDouble) -> None:
    """Two 429s in a row are waited out (Retry-After) and the read resumes where it was."""
    _seed(pd, 10)
    pd.rate_limit(2, after=4)  # the fields, check's person and two pages pass, then two 429s
    result = _cli(config, "sync")
    assert result.exit_code == 0, result.output
    assert _listed(double) == _crm_view(pd)
    log = [(r.path, r.params.get("cursor"), r.status) for r in pd.requests()]
    limited = [i for i, entry in enumerate(log) if entry[2] == 429]
    assert len(limited) == 2
    assert log[limited[-1] + 1] == (log[limited[0]][0], log[limited[0]][1], 200)


def test_unknown_custom_field_fails_check_naming_the_fields(config: Path,
                                                            pd: PipedriveDouble) -> None:
    """A field name Pipedrive does not have: `check` exits 2 listing the custom fields."""
    config.write_text(config.read_text().replace(FIELDS, '["first_name", "last_name", "Plan"]'))
    result = _cli(config, "check")
    assert result.exit_code == 2, result.output
    assert "'Plan' is no person field" in result.output
    assert "'Plan tier'" in result.output


def test_refused_token_fails_check(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token Pipedrive refuses: `check` exits 2 naming `token`, never printing the token."""
    monkeypatch.setenv("PIPEDRIVE_TOKEN", "wrong-token-81d2")
    result = _cli(config, "check")
    assert result.exit_code == 2, result.output
    assert "source.token" in result.output
    assert "wrong-token-81d2" not in result.output
