"""Cursor edge cases of the SQL connector on the real engines (issue 7): a float cursor with a
full page of equal values, a MariaDB TIMESTAMP cursor under different session time zones, and
the warning for a numeric cursor without lookback."""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from structlog.testing import capture_logs

from sync_service.connectors.sql import SqlConnector, SqlSourceSettings
from sync_service.models import Position

LIMIT = 100  # a read that loops would yield far more than the table holds
# What a server configured with that time zone gives each new session.
PLUS_5 = "SET time_zone = '+05:00'"
AT_UTC = "SET time_zone = '+00:00'"


def _table(url: str, cursor_type: sa.types.TypeEngine[float] | sa.types.TypeEngine[datetime]
           ) -> sa.Table:
    engine = sa.create_engine(url)
    table = sa.Table("scores", sa.MetaData(),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(100)),
                     sa.Column("v", cursor_type))
    table.create(engine)
    engine.dispose()
    return table


def _connector(url: str, **settings: object) -> SqlConnector:
    return SqlConnector(SqlSourceSettings(url=url, table="scores", key="id", cursor="v",
                                          fetch_size=2, **settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", [
    "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_float_cursor_with_full_pages_of_equal_values_does_not_loop(
        engine: str, request: pytest.FixtureRequest) -> None:
    """Five rows sharing a single-precision float cursor, read two a page: each once, and a read
    after one of them (the watermark as read) yields exactly the rest."""
    url: str = request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "pg_url",
                                        "mariadb": "mariadb_url"}[engine])
    table = _table(url, sa.Float().with_variant(sa.REAL(), "postgresql")
                   .with_variant(mysql.FLOAT(), "mysql", "mariadb"))
    source = sa.create_engine(url)
    with source.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "email": f"u{i}@example.com", "v": 0.1}
                                      for i in range(1, 6)])
        conn.execute(table.insert(), [{"id": 9, "email": "u9@example.com", "v": 0.7}])
    source.dispose()
    connector = _connector(url, lookback=0)
    try:
        first = list(islice(connector.read(None), LIMIT))
        assert [r.key for r in first] == [1, 2, 3, 4, 5, 9]
        second = first[1]
        rest = list(islice(connector.read(Position(second.cursor, second.key)), LIMIT))
        assert [r.key for r in rest] == [3, 4, 5, 9]
        last = list(islice(connector.read(Position(first[-1].cursor, 9)), LIMIT))
        assert last == []
    finally:
        connector.close()


@pytest.mark.mariadb
def test_mariadb_timestamp_cursor_reads_in_utc_whatever_the_session_zone(mariadb_url: str
                                                                         ) -> None:
    """A TIMESTAMP cursor read while the server's zone is +05:00 gives a watermark that still
    finds a later row once the server's zone is UTC: the connector's session is pinned to UTC."""
    table = _table(mariadb_url, mysql.TIMESTAMP(fsp=6))
    source = sa.create_engine(mariadb_url)
    with source.begin() as conn:
        conn.execute(sa.text("SET time_zone = '+00:00'"))
        conn.execute(table.insert(), [{"id": 1, "email": "u1@example.com",
                                       "v": datetime(2026, 3, 1, 7, 0)}])
    zoned = f"{mariadb_url}?init_command={quote(PLUS_5)}"
    connector = _connector(zoned, lookback=0)
    try:
        [only] = list(islice(connector.read(None), LIMIT))
        assert only.cursor == datetime(2026, 3, 1, 7, 0)  # UTC, not the +05:00 wall clock
        mark = Position(only.cursor, only.key)
    finally:
        connector.close()
    with source.begin() as conn:  # committed after that read, two hours later (UTC)
        conn.execute(sa.text("SET time_zone = '+00:00'"))
        conn.execute(table.insert(), [{"id": 2, "email": "u2@example.com",
                                       "v": datetime(2026, 3, 1, 9, 0)}])
    source.dispose()
    utc = _connector(f"{mariadb_url}?init_command={quote(AT_UTC)}", lookback=0)
    try:
        assert [r.key for r in islice(utc.read(mark), LIMIT)] == [2]
    finally:
        utc.close()


def test_check_warns_when_a_numeric_cursor_has_no_lookback(sqlite_url: str) -> None:
    """`check` warns, saying how to set one, for a numeric cursor without lookback; not when
    a lookback is set or the cursor is temporal."""
    _table(sqlite_url, sa.Float())
    for lookback, warned in ((None, True), (0, True), (100, False)):
        connector = _connector(sqlite_url, lookback=lookback)
        try:
            with capture_logs() as logs:
                connector.check()
        finally:
            connector.close()
        found = [e for e in logs if e["event"] == "sql.numeric_cursor_without_lookback"]
        assert bool(found) is warned, (lookback, logs)
        if found:
            assert "lookback" in found[0]["hint"]
            assert found[0]["column"] == "v"
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE stamped (id INTEGER PRIMARY KEY, v DATETIME)"))
    engine.dispose()
    temporal = SqlConnector(SqlSourceSettings(url=sqlite_url, table="stamped", key="id",
                                              cursor="v"))
    try:
        with capture_logs() as logs:
            temporal.check()
    finally:
        temporal.close()
    assert not [e for e in logs if e["event"] == "sql.numeric_cursor_without_lookback"]
