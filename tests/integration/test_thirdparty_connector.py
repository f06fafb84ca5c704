"""A third-party connector, installed through its entry point, passes the contract and syncs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sync_service.__main__ import cli
from sync_service.connector import Connector, available_connectors, load_connector
from sync_service.models import RunOutcome
from sync_service.testing.contract import ConnectorContract, ContractSource, Row
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.source_pipeline import SourcePipeline

THIRD_PARTY = Path(__file__).parents[1] / "fixtures" / "thirdparty"
API_KEY = "acme-key-1"  # the fixture CRM's own key, not a secret
TOKEN = "tok-acme-7c1d"


@pytest.fixture(autouse=True)
def acme_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acme-connector distribution (package + dist-info with entry points) on sys.path."""
    monkeypatch.syspath_prepend(str(THIRD_PARTY))


class AcmeSource(ContractSource):
    """The ACME document on disk; connectors come from the entry point, not an import."""

    several_emails = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.contacts: dict[str, dict[str, Any]] = {}
        self.clock = 1_000
        self._save()

    def _save(self) -> None:
        self.path.write_text(json.dumps({"api_key": API_KEY,
                                         "contacts": list(self.contacts.values())}))

    def put(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self.contacts[row.key] = {"id": int(row.key), "updated": row.tick,
                                      "email": row.emails[0] if row.emails else None,
                                      "name": row.name, "deleted": False}
        self._save()

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.clock += 1
            self.contacts[key].update(deleted=True, updated=self.clock)
        self._save()

    def connect(self, *, page_size: int, api_key: str = API_KEY) -> Connector:
        factory = load_connector("acme")
        settings = factory.settings_model.model_validate(
            {"connector": "acme", "path": str(self.path), "api_key": api_key})
        return factory(settings)

    def connect_with_bad_credentials(self) -> Connector:
        return self.connect(page_size=3, api_key="wrong")


class TestAcmeConnectorContract(ConnectorContract):
    """The example third-party connector against the contract suite."""

    @pytest.fixture
    def source(self, tmp_path: Path) -> ContractSource:
        return AcmeSource(tmp_path / "acme.json")


def _document(path: Path, count: int) -> None:
    path.write_text(json.dumps({"api_key": API_KEY, "contacts": [
        {"id": n, "updated": n % 7, "email": f"acme{n}@example.com", "name": f"Acme {n}"}
        for n in range(1, count + 1)]}))


def test_entry_point_is_found() -> None:
    """The installed distribution's entry points are in the connector registry."""
    assert {"acme", "acme-shuffled"} <= set(available_connectors())


def test_sync_from_the_cli_uses_the_third_party_connector(
        tmp_path: Path, double: MailtrapDouble, mailtrap_server: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`mailtrap-sync sync` with connector = "acme" reads ACME and fills the Mailtrap double."""
    double.grant(TOKEN, 1001)
    double.add_field("name", "text")
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    monkeypatch.setenv("ACME_KEY", API_KEY)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    _document(tmp_path / "acme.json", 25)
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(f"""
[state]
url = "sqlite:///{tmp_path}/state.db"

[[pipelines]]
name = "acme"
lists = ["ACME"]

[pipelines.source]
connector = "acme"
path = "{tmp_path}/acme.json"
api_key = "${{ACME_KEY}}"

[pipelines.mapping]
email = "email"
fields = {{ name = "name" }}
""")
    result = CliRunner().invoke(cli, ["--config", str(config), "sync"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "acme: sync succeeded" in result.output
    assert {e: dict(c.fields) for e, c in double.contacts().items()}["acme3@example.com"] == {
        "name": "Acme 3"}
    assert len(double.contacts()) == 25


def test_a_connector_out_of_order_fails_the_run_naming_it(
        tmp_path: Path, double: MailtrapDouble) -> None:
    """A connector yielding a record behind the previous one fails the run; nothing is lost."""
    _document(tmp_path / "acme.json", 10)
    pipeline = SourcePipeline(double, {"connector": "acme-shuffled", "api_key": API_KEY,
                                       "path": str(tmp_path / "acme.json")},
                              f"sqlite:///{tmp_path}/state.db")
    try:
        result = pipeline.run()
        assert result.outcome is RunOutcome.FAILED
        assert "ShuffledConnector broke (cursor, key) order" in (result.error or "")
        assert pipeline.store.get_watermark("crm") is None
    finally:
        pipeline.close()
