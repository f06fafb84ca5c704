"""Engines: supported URLs, SQLite pragmas, errors that name the database without its password."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_service.errors import ConfigError, StateError
from sync_service.models import Position, RunKind
from sync_service.state import StateStore
from tests.unit.state.builders import confirm, entry


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(sqlite_url: str) -> None:
    """Every SQLite connection runs in WAL mode, enforces foreign keys, waits 30 s for locks."""
    store = StateStore.from_url(sqlite_url)
    try:
        with store.engine.connect() as conn:
            pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                      for name in ("journal_mode", "foreign_keys", "busy_timeout")}
    finally:
        store.close()
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30_000}


def test_in_memory_sqlite_is_one_database() -> None:
    """sqlite:// (memory) keeps one database across calls, so a store on it is usable."""
    store = StateStore.from_url("sqlite://")
    try:
        store.upgrade()
        store.set_watermark("p", Position(1, 1))
        assert store.get_watermark("p") == Position(1, 1)
    finally:
        store.close()


@pytest.mark.parametrize("url", [
    "mysql+pymysql://u:secret@localhost/db", "mariadb://u:secret@localhost/db",
    "postgresql+asyncpg://u:secret@localhost/db", "oracle://u:secret@localhost/db",
])
def test_unsupported_backends_are_a_config_error(url: str) -> None:
    """Anything but SQLite and PostgreSQL/psycopg is refused, naming the supported ones."""
    with pytest.raises(ConfigError, match=r"use sqlite:///path\.db or postgresql") as caught:
        StateStore.from_url(url)
    assert "secret" not in str(caught.value)


def test_malformed_url_is_a_config_error_without_the_url() -> None:
    """A URL that does not parse is a ConfigError that does not echo it (it may hold a password)."""
    with pytest.raises(ConfigError, match="cannot be parsed") as caught:
        StateStore.from_url("not a url:secret")
    assert "secret" not in str(caught.value)


def test_plain_postgresql_url_uses_psycopg() -> None:
    """postgresql:// selects the psycopg 3 driver (psycopg2 is not a dependency)."""
    store = StateStore.from_url("postgresql://u@127.0.0.1/db")
    try:
        assert store.engine.dialect.driver == "psycopg"
    finally:
        store.close()


def test_unreachable_postgresql_names_the_url_without_its_password() -> None:
    """A database that cannot be reached raises StateError with the URL, password masked."""
    store = StateStore.from_url("postgresql+psycopg://sync:s3cr3t@127.0.0.1:1/state")
    try:
        with pytest.raises(StateError, match="cannot reach the state store") as caught:
            store.get_watermark("p")
    finally:
        store.close()
    message = str(caught.value)
    assert "postgresql+psycopg://sync:***@127.0.0.1:1/state" in message
    assert "s3cr3t" not in message


def test_unopenable_sqlite_file_is_a_state_error(tmp_path: Path) -> None:
    """A SQLite path in a missing directory raises StateError naming the path."""
    missing = tmp_path / "no" / "such" / "dir" / "state.db"
    store = StateStore.from_url(f"sqlite:///{missing}")
    try:
        with pytest.raises(StateError, match=str(missing)):
            store.ensure_schema()
    finally:
        store.close()


def test_pipelines_lists_every_pipeline_with_state(store: StateStore) -> None:
    """pipelines() names each pipeline that has a watermark, run, batch, contact or rejection."""
    assert store.pipelines() == []
    store.set_watermark("w", Position(1, 1))
    run_id = store.start_run("r", RunKind.SYNC)
    store.record_rejections("x", None, [])
    confirm(store, run_id, [entry("1")], 1)  # pipeline "p": batch and contacts
    store.acquire_lease("lease-only", "a", 60)
    assert store.pipelines() == ["p", "r", "w"]


def test_sql_errors_do_not_leak_parameters(store: StateStore, run_id: int) -> None:
    """A failed statement's StateError carries the driver's first line, not SQL or emails."""
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE batch_contacts"))
    with pytest.raises(StateError, match="record_batch failed") as caught:
        store.record_batch("p", run_id, [entry("1", "private@example.com")])
    assert "private@example.com" not in str(caught.value)
    assert "INSERT" not in str(caught.value)
    assert store.last_batch("p") is None
