"""Issue 8, cases 2 and 4, through the command line: a duplicated source key and NUL bytes in an
email or a text key reject their row (or are stored escaped), never the run: `sync` exits 0, the
other rows are synced, and `rejects` names the bad row."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.integration.test_cli import CONFIG, _cli, served

pytestmark = pytest.mark.usefixtures(served.__name__)


def _crm(path: Path, rows: list[tuple[str, str]]) -> str:
    """A customers table with a text key and no unique constraint; rows: (id, email)."""
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (id TEXT, email TEXT, first_name TEXT, "
                             "last_name TEXT, seats INTEGER, updated_at DATETIME)"))
        conn.execute(sa.text("INSERT INTO customers VALUES (:id, :email, 'F', 'L', 1, :at)"), [
            {"id": key, "email": email, "at": f"2026-03-01 12:00:{n:02d}.000000"}
            for n, (key, email) in enumerate(rows)])
    engine.dispose()
    return url


def _sync_and_rejects(tmp_path: Path, state: str, source: str) -> list[dict[str, str]]:
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=state, source=source))
    for _ in range(2):  # the second run keeps the outcome, and fails nothing either
        result = _cli("--config", str(config), "sync")
        assert result.exit_code == 0, result.output + result.stderr
        assert "Traceback" not in result.stderr
    listed = _cli("--config", str(config), "rejects", "customers", "--json")
    assert listed.exit_code == 0, listed.output
    rows: list[dict[str, str]] = orjson.loads(listed.output)
    return rows


def test_duplicate_key_rejects_the_later_row(tmp_path: Path, double: MailtrapDouble) -> None:
    """Two rows with key 2: `sync` exits 0, the first is synced, the later is duplicate_key."""
    source = _crm(tmp_path / "crm.db", [("1", "a@example.com"), ("2", "b@example.com"),
                                       ("3", "c@example.com"), ("2", "twin@example.com")])
    rejects = _sync_and_rejects(tmp_path, f"sqlite:///{tmp_path}/state.db", source)
    assert [(r["source_key"], r["kind"]) for r in rejects] == [("2", "duplicate_key")]
    assert sorted(double.contacts()) == ["a@example.com", "b@example.com", "c@example.com"]


@pytest.mark.postgres
def test_nul_bytes_with_a_postgres_state_store(tmp_path: Path, pg_url: str,
                                               double: MailtrapDouble) -> None:
    """A NUL in an email rejects that row naming its key; a NUL in a text key is stored."""
    source = _crm(tmp_path / "crm.db", [("k\x00ey", "a@example.com"),
                                       ("2", "b\x00@example.com"), ("3", "c@example.com")])
    rejects = _sync_and_rejects(tmp_path, pg_url, source)
    assert [(r["source_key"], r["kind"]) for r in rejects] == [("2", "invalid_email")]
    assert "NUL" in rejects[0]["reason"]
    assert sorted(double.contacts()) == ["a@example.com", "c@example.com"]
