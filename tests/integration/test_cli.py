"""The command line as a user drives it, against the Mailtrap double served on a local port."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.harness import FIELDS, T0, Source

TOKEN = "tok-9f2c41d7e8b6"  # the double's token for these tests
CONFIG = """
[state]
url = "{state}"

[mailtrap]
poll_interval = 0.05

[[pipelines]]
name = "customers"
lists = ["Customers"]
batch_size = 40

[pipelines.source]
connector = "sql"
url = "{source}"
table = "customers"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping]
email = "email"

[pipelines.mapping.fields]
first_name = "first_name"
last_name = "last_name"
seats = "seats"
"""


@pytest.fixture
def served(double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """The double on a real port, a token of its own, and the environment pointing at it."""
    double.grant(TOKEN, 1001)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return mailtrap_server


@pytest.fixture
def workdir(tmp_path: Path, served: str) -> Iterator[tuple[Path, Source]]:
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 101))
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db",
                                    source=f"sqlite:///{tmp_path}/crm.db"))
    yield config, source
    source.close()


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _state_dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = sa.create_engine(url)
    try:
        names = sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            return {n: sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM "{n}"'))), key=repr)
                    for n in names}
    finally:
        engine.dispose()


def test_sync_then_status(workdir: tuple[Path, Source], double: MailtrapDouble) -> None:
    """`sync` exits 0 and syncs everything; `status` shows the run, watermark and last import."""
    config, _ = workdir
    result = _cli("--config", str(config), "sync")
    assert result.exit_code == 0, result.output
    assert "customers: sync succeeded" in result.output
    assert len(double.contacts()) == 100
    assert len(double.imports()) == 3  # batch_size 40

    status = _cli("--config", str(config), "status", "--json")
    assert status.exit_code == 0, status.output
    row = orjson.loads(status.stdout)[0]
    assert row["last_run"]["outcome"] == "succeeded"
    assert row["contacts_tracked"] == 100
    assert row["last_import"]["status"] == "finished"
    assert row["watermark"] is not None
    assert TOKEN not in status.output


def test_plan_sends_nothing_and_writes_nothing(workdir: tuple[Path, Source],
                                               double: MailtrapDouble) -> None:
    """`plan` reports what would change, makes no write request and changes no state."""
    config, source = workdir
    assert _cli("--config", str(config), "sync").exit_code == 0
    source.update(range(1, 11), at=T0 + timedelta(hours=1), first_name="Changed")
    state_url = f"sqlite:///{config.parent}/state.db"
    before = _state_dump(state_url)
    double.clear_requests()

    result = _cli("--config", str(config), "plan", "customers", "--json")
    assert result.exit_code == 0, result.output
    plan = orjson.loads(result.stdout)
    assert plan["counts"]["updated"] == 10
    assert plan["imports"] == 1
    assert plan["samples"]["update"][0]["contacts"][0]["fields"]["first_name"] == "Changed"
    assert [r for r in double.requests() if r.is_write] == []
    assert _state_dump(state_url) == before


def test_plan_on_a_new_state_store_creates_nothing(workdir: tuple[Path, Source],
                                                   double: MailtrapDouble) -> None:
    """`plan` before any sync: every row is a create; no list is created in Mailtrap."""
    config, _ = workdir
    result = _cli("--config", str(config), "plan", "customers", "--json")
    assert result.exit_code == 0, result.output
    plan = orjson.loads(result.stdout)
    assert plan["counts"]["created"] == 100
    assert plan["lists_to_create"] == ["Customers"]
    assert double.lists() == {}
    assert not (config.parent / "state.db").exists()
    assert [r for r in double.requests() if r.is_write] == []


def test_config_error_exits_2_naming_file_and_key(tmp_path: Path, served: str) -> None:
    """A bad configuration file: one message naming file, pipeline and key; exit code 2."""
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.format(state="sqlite://", source="sqlite://").replace(
        "batch_size = 40", "batch_size = 60000"))
    result = _cli("--config", str(config), "sync")
    assert result.exit_code == 2
    assert str(config) in result.stderr
    assert "pipelines[0] (customers): batch_size" in result.stderr


def test_busy_pipeline_exits_3(workdir: tuple[Path, Source], double: MailtrapDouble) -> None:
    """While another process holds the pipeline's lease, `sync` exits 3 and sends nothing."""
    config, _ = workdir
    store = StateStore.from_url(f"sqlite:///{config.parent}/state.db")
    store.ensure_schema()
    alive = store.holder_lock("customers")  # what a live holder keeps (see state/leases.py)
    assert alive.try_acquire()
    assert store.acquire_lease("customers", "other-host:1234:abcd", 60)
    try:
        result = _cli("--config", str(config), "sync")
    finally:
        alive.release()
        store.close()
    assert result.exit_code == 3
    assert "busy" in result.stderr
    assert "other-host:1234" in result.stderr
    assert double.contacts() == {}


def test_check_names_missing_merge_tags(workdir: tuple[Path, Source],
                                        double: MailtrapDouble) -> None:
    """`check` passes on a good set-up and, when a mapped field is missing, names its tag and
    exits 2 (a configuration error)."""
    config, _ = workdir
    ok = _cli("--config", str(config), "check")
    assert ok.exit_code == 0, ok.output
    assert "token and account" in ok.output

    config.write_text(config.read_text() + 'company = "last_name"\n')
    bad = _cli("--config", str(config), "check")
    assert bad.exit_code == 2
    assert "company" in bad.output
    assert TOKEN not in bad.output


def test_wrong_token_fails_without_showing_it(workdir: tuple[Path, Source],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A token Mailtrap refuses fails the run (exit 1) and never appears in output or logs."""
    config, _ = workdir
    monkeypatch.setenv("MAILTRAP_API_TOKEN", "wrong-token-5e1a9")
    result = _cli("--config", str(config), "--log-format", "json", "sync")
    assert result.exit_code == 1
    assert "refused the API token" in result.output
    assert "wrong-token-5e1a9" not in result.output


def test_missing_token_is_a_config_error(workdir: tuple[Path, Source],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILTRAP_API_TOKEN: exit 2 with a message saying where the token comes from."""
    config, _ = workdir
    monkeypatch.delenv("MAILTRAP_API_TOKEN")
    result = _cli("--config", str(config), "sync")
    assert result.exit_code == 2
    assert "MAILTRAP_API_TOKEN" in result.stderr


@pytest.mark.parametrize("engine", ["sqlite",
                                    pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_db_upgrade_on_an_empty_database(engine: str, tmp_path: Path, served: str,
                                         request: pytest.FixtureRequest) -> None:
    """`db upgrade` creates the schema in an empty SQLite or PostgreSQL database."""
    url = (f"sqlite:///{tmp_path}/fresh.db" if engine == "sqlite"
           else request.getfixturevalue("pg_url"))
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(state=url, source="sqlite://"))
    result = _cli("--config", str(config), "db", "upgrade")
    assert result.exit_code == 0, result.output
    store = StateStore.from_url(url)
    try:
        assert store.schema_revision() == store.head_revision()
    finally:
        store.close()


def test_check_verifies_the_token_even_with_an_account_id_configured(
        workdir: tuple[Path, Source], monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` asks Mailtrap about the token although the account id is configured."""
    config, _ = workdir
    monkeypatch.setenv("MAILTRAP_ACCOUNT_ID", "1001")
    monkeypatch.setenv("MAILTRAP_API_TOKEN", "refused-token-77a1")
    result = _cli("--config", str(config), "check")
    assert result.exit_code == 1
    assert "✗ token and account" in result.output
    assert "refused-token-77a1" not in result.output
