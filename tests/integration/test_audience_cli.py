"""Opt-outs, events and reconcile as a user drives them: `sync`, `plan`, `status` and
`reconcile` against the Mailtrap double served on a local port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.harness import FIELDS, Source

TOKEN = "tok-audience-5d1e"
CONFIG = """
[state]
url = "{state}"

[mailtrap]
poll_interval = 0.05

[[pipelines]]
name = "customers"
lists = ["Customers"]
reconcile_every = "1d"

[pipelines.source]
connector = "sql"
url = "{source}"
table = "customers"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping.fields]
first_name = "first_name"
seats = "seats"

[pipelines.consent]
unsubscribed = "opted_out"

[pipelines.events]
email = "email"
name_value = "TrialStarted"
params = ["plan"]

[pipelines.events.source]
connector = "sql"
url = "{source}"
table = "crm_events"
key = "id"
cursor = "id"
"""


@pytest.fixture
def config(tmp_path: Path, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    double.grant(TOKEN, 1001)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 51))
    with source.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers ADD COLUMN opted_out VARCHAR(5)"))
        conn.execute(sa.text("UPDATE customers SET opted_out = 'yes' WHERE id <= 5"))
        conn.execute(sa.text("CREATE TABLE crm_events (id INTEGER PRIMARY KEY, "
                             "email VARCHAR(255), plan VARCHAR(20))"))
        conn.execute(sa.text("INSERT INTO crm_events VALUES (:id, :email, 'pro')"),
                     [{"id": i, "email": f"user{i}@example.com"} for i in range(1, 11)])
    path = tmp_path / "mailtrap-sync.toml"
    path.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db", source=source.url))
    yield path
    source.close()


def _cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_plan_sync_status_reconcile(config: Path, double: MailtrapDouble) -> None:
    """`plan` lists the events it would send; `sync` unsubscribes and sends them; `status`
    counts both; `reconcile` + `sync` restore contacts deleted in Mailtrap."""
    plan = _cli(config, "plan", "customers", "--json")
    assert plan.exit_code == 0, plan.output
    report = orjson.loads(plan.stdout)
    assert report["counts"]["events_would_send"] == 10
    assert report["samples"]["event"][0] == {"source_key": "1", "email": "user1@example.com",
                                             "name": "TrialStarted", "params": {"plan": "pro"}}
    assert double.events() == []

    assert _cli(config, "sync").exit_code == 0
    assert sorted(e.email for e in double.events()) == sorted(
        f"user{i}@example.com" for i in range(1, 11))
    assert {e for e, c in double.contacts().items() if c.status == "unsubscribed"} == {
        f"user{i}@example.com" for i in range(1, 6)}

    status = _cli(config, "status", "--json")
    counts = orjson.loads(status.stdout)[0]["audience"]
    assert counts["opted_out"] == 5
    assert counts["events_sent"] == 10
    assert counts["events_backlog"] == 0
    human = _cli(config, "status")
    assert "events_sent=10" in human.output
    assert "opted_out=5" in human.output

    for i in range(20, 26):
        double.delete_contact(f"user{i}@example.com")
    reconciled = _cli(config, "reconcile", "customers")
    assert reconciled.exit_code == 0, reconciled.output
    assert "missing=6" in reconciled.output
    assert _cli(config, "sync").exit_code == 0
    assert len(double.contacts()) == 50
    assert len(double.events()) == 10
