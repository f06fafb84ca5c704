"""The SQL connector against real SQLite, PostgreSQL and MariaDB (a fresh database per test)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sync_service.connectors.sql import SqlConnector, SqlSourceSettings
from sync_service.errors import ConfigError, SourceError
from sync_service.models import Position, SourceRecord

T0 = datetime(2024, 3, 1, 9, 0, 0)  # whole seconds: MariaDB's DATETIME keeps no fraction
Connect = Callable[..., SqlConnector]


class Source:
    """One test's source database: an engine for setting it up, and table helpers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.metadata = sa.MetaData()

    def customers(self, *, key_type: sa.types.TypeEngine[Any] | None = None) -> sa.Table:
        table = sa.Table(
            "customers", self.metadata,
            sa.Column("id", key_type or sa.Integer(), primary_key=True, autoincrement=False),
            sa.Column("email", sa.String(200), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=True),
            sa.Column("version", sa.Integer(), nullable=True),
            sa.Column("deleted_at", sa.DateTime(), nullable=True),
            sa.Column("is_deleted", sa.Boolean(), nullable=True),
        )
        table.create(self.engine)
        return table

    def insert(self, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(table.insert(), list(rows))

    def execute(self, statement: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement))


def row(key: Any, updated_at: datetime | None, **values: Any) -> dict[str, Any]:
    """A customers row with every column present (executemany wants the same keys throughout)."""
    return {"id": key, "email": f"c{key}@example.com", "updated_at": updated_at,
            "version": None, "deleted_at": None, "is_deleted": False, **values}


def keys(records: Iterator[SourceRecord] | list[SourceRecord]) -> list[Any]:
    return [record.key for record in records]


@pytest.fixture
def source(any_db_url: str) -> Iterator[Source]:
    """The test's source database, on each engine in turn."""
    found = Source(any_db_url)
    yield found
    found.engine.dispose()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Build SqlConnectors from settings keyword arguments; closed after the test."""
    made: list[SqlConnector] = []

    def make(url: str, **options: Any) -> SqlConnector:
        raw: dict[str, Any] = {"connector": "sql", "url": url, "key": "id", "cursor": "updated_at"}
        if "query" not in options:
            raw["table"] = "customers"
        raw.update(options)
        connector = SqlConnector(SqlSourceSettings.model_validate(raw))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


def _statements(engine: sa.Engine) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen


def _parameter_values(parameters: Any) -> list[Any]:
    return list(parameters.values()) if isinstance(parameters, dict) else list(parameters)


# reading order ---------------------------------------------------------------------------------
def test_full_read_returns_every_row_once_in_cursor_key_order_typed(
    source: Source, connect: Connect
) -> None:
    """read(None) yields each row once, ordered by (cursor, key), with typed keys and values."""
    table = source.customers()
    cursors = {5: T0, 1: T0 + timedelta(seconds=1), 2: T0 + timedelta(seconds=1),
               3: T0 + timedelta(seconds=2), 4: T0 + timedelta(seconds=3)}
    rows = [row(k, c, version=k * 10) for k, c in cursors.items()]
    random.Random(7).shuffle(rows)
    source.insert(table, rows)

    records = list(connect(source.url).read(None))

    assert keys(records) == [5, 1, 2, 3, 4]
    for record in records:
        assert type(record.key) is int
        assert record.cursor == cursors[record.key]
        assert type(record.cursor) is datetime
        assert record.values["email"] == f"c{record.key}@example.com"
        assert record.values["version"] == record.key * 10
        assert set(record.values) == {c.name for c in table.columns}
        assert record.deleted is False


def test_ties_spanning_pages_are_read_once_and_resumed_exactly(
    source: Source, connect: Connect
) -> None:
    """5,000 rows on one cursor value, 1,000 a page: each read once; resumes return new rows."""
    table = source.customers()
    source.insert(table, [row(k, T0) for k in range(1, 5001)])
    connector = connect(source.url, fetch_size=1000, lookback=0)

    records = list(connector.read(None))
    assert keys(records) == list(range(1, 5001))

    last = records[-1].position
    assert list(connector.read(last)) == []

    source.insert(table, [row(5001, T0)])
    assert keys(connector.read(last)) == [5001]


def test_lookback_rereads_a_late_row_inside_the_window_only(
    source: Source, connect: Connect
) -> None:
    """A row committed late with a cursor 3 min behind the watermark is read; 8 min behind, not."""
    table = source.customers()
    at = T0 + timedelta(minutes=10)
    source.insert(table, [row(1, at), row(2, at), row(3, at)])
    watermark = list(connect(source.url).read(None))[-1].position
    source.insert(table, [row(10, at - timedelta(minutes=3)), row(11, at - timedelta(minutes=8))])

    assert keys(connect(source.url, lookback="5m").read(watermark)) == [10, 1, 2, 3]
    assert keys(connect(source.url, lookback=0).read(watermark)) == []


def test_default_lookback_for_a_datetime_cursor_is_five_minutes(
    source: Source, connect: Connect
) -> None:
    """Without `lookback`, a temporal cursor re-reads the last 5 minutes behind the watermark."""
    table = source.customers()
    source.insert(table, [row(1, T0 - timedelta(minutes=6)), row(2, T0 - timedelta(minutes=4)),
                          row(3, T0)])
    assert keys(connect(source.url).read(Position(T0, 3))) == [2, 3]


# key and cursor types --------------------------------------------------------------------------
def test_integer_keys_are_never_compared_as_text(source: Source, connect: Connect) -> None:
    """Keys 9, 10, 100 page in numeric order, and a watermark key given as text is made numeric."""
    table = source.customers()
    source.insert(table, [row(100, T0), row(9, T0), row(10, T0)])
    connector = connect(source.url, fetch_size=1, lookback=0)

    assert keys(connector.read(None)) == [9, 10, 100]
    assert keys(connector.read(Position(T0, "9"))) == [10, 100]


def test_string_keys_page_and_resume_as_strings(source: Source, connect: Connect) -> None:
    """A text key orders ties as text ('k10' before 'k2') across pages and resumes after a key."""
    table = source.customers(key_type=sa.String(20))
    source.insert(table, [row(k, T0) for k in ("k2", "b", "k10", "a", "k09")])
    connector = connect(source.url, fetch_size=2, lookback=0)

    records = list(connector.read(None))
    assert keys(records) == ["a", "b", "k09", "k10", "k2"]
    assert keys(connector.read(records[2].position)) == ["k10", "k2"]
    assert keys(connector.fetch(["k2", "zz"])) == ["k2"]


def test_integer_cursor_reads_in_version_order_with_a_numeric_lookback(
    source: Source, connect: Connect
) -> None:
    """An integer cursor orders by value; lookback 2 re-reads two versions back; '5m' is refused."""
    table = source.customers()
    source.insert(table, [row(k, T0, version=v) for k, v in [(1, 5), (2, 3), (3, 4), (4, 1)]])
    connector = connect(source.url, cursor="version", lookback=2)

    records = list(connector.read(None))
    assert keys(records) == [4, 2, 3, 1]
    assert [r.cursor for r in records] == [1, 3, 4, 5]
    assert keys(connector.read(Position(5, 1))) == [2, 3, 1]
    assert keys(connect(source.url, cursor="version").read(Position(4, 3))) == [1]
    with pytest.raises(ConfigError, match="holds numbers"):
        list(connect(source.url, cursor="version", lookback="5m").read(Position(5, 1)))


def test_aware_watermark_is_matched_to_a_naive_column(source: Source, connect: Connect) -> None:
    """An aware watermark is compared as the naive UTC the column holds, not as another instant."""
    table = source.customers()
    source.insert(table, [row(1, T0), row(2, T0 + timedelta(seconds=1))])
    aware = T0.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert keys(connect(source.url, lookback=0).read(Position(aware, 1))) == [2]


def test_timestamptz_cursor_on_postgres_is_read_aware(pg_url: str, connect: Connect) -> None:
    """A timestamptz cursor yields aware datetimes, and a naive watermark is taken as UTC."""
    pg = Source(pg_url)
    table = sa.Table("customers", pg.metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("updated_at", sa.DateTime(timezone=True)))
    table.create(pg.engine)
    pg.insert(table, [{"id": 1, "updated_at": T0.replace(tzinfo=UTC)},
                      {"id": 2, "updated_at": T0.replace(tzinfo=UTC) + timedelta(hours=1)}])
    connector = connect(pg_url, lookback=0)
    try:
        assert [r.cursor for r in connector.read(None)] == [
            T0.replace(tzinfo=UTC), T0.replace(tzinfo=UTC) + timedelta(hours=1)]
        assert keys(connector.read(Position(T0, 1))) == [2]
    finally:
        pg.engine.dispose()


# query mode ------------------------------------------------------------------------------------
def _accounts(source: Source) -> None:
    table = source.customers()
    accounts = sa.Table("accounts", source.metadata,
                        sa.Column("customer_id", sa.Integer, primary_key=True),
                        sa.Column("plan", sa.String(20), nullable=False))
    accounts.create(source.engine)
    source.insert(table, [row(1, T0), row(2, T0), row(4, T0 + timedelta(seconds=1)),
                          row(3, T0, email="c3@other.org")])
    source.insert(accounts, [{"customer_id": 1, "plan": "pro"}, {"customer_id": 2, "plan": "free"},
                             {"customer_id": 3, "plan": "pro"}, {"customer_id": 4, "plan": "team"}])


JOIN_QUERY = """
    SELECT c.id, c.email, c.updated_at, a.plan
    FROM customers c JOIN accounts a ON a.customer_id = c.id
    WHERE a.plan <> 'free' AND c.email LIKE '%@example.com' AND c.email <> 'odd:value';
"""


def test_query_mode_reads_a_join_with_a_where_clause(source: Source, connect: Connect) -> None:
    """`query` is wrapped as a subquery: its join and filter apply, its columns become values."""
    _accounts(source)
    connector = connect(source.url, query=JOIN_QUERY, lookback=0)
    connector.check()

    records = list(connector.read(None))
    assert keys(records) == [1, 4]
    assert [r.values["plan"] for r in records] == ["pro", "team"]
    assert set(records[0].values) == {"id", "email", "updated_at", "plan"}
    assert list(connector.read(records[-1].position)) == []
    assert keys(connector.fetch(["4", "2", "1"])) == [1, 4]


def test_query_mode_lookback_catches_a_late_row(source: Source, connect: Connect) -> None:
    """In query mode too (text datetimes on SQLite), a late row inside the window is read."""
    _accounts(source)
    connector = connect(source.url, query=JOIN_QUERY, lookback="5m")
    watermark = list(connector.read(None))[-1].position
    customers = source.metadata.tables["customers"]
    source.insert(customers, [row(9, T0 - timedelta(minutes=2)), row(8, T0 - timedelta(hours=1))])
    source.insert(source.metadata.tables["accounts"], [{"customer_id": 9, "plan": "pro"},
                                                       {"customer_id": 8, "plan": "pro"}])
    assert keys(connector.read(watermark)) == [9, 1, 4]


# bounded memory --------------------------------------------------------------------------------
def test_reads_are_limited_page_queries_issued_lazily(source: Source, connect: Connect) -> None:
    """Each row query carries LIMIT fetch_size, and pages are fetched only as records are taken."""
    table = source.customers()
    source.insert(table, [row(k, T0 + timedelta(seconds=k % 7)) for k in range(1, 2501)])
    connector = connect(source.url, fetch_size=1000)
    statements = _statements(connector.engine)

    def pages() -> list[tuple[str, Any]]:
        return [(s, p) for s, p in statements if "FROM customers" in s and "ORDER BY" in s]

    records = connector.read(None)
    next(records)
    assert len(pages()) == 2  # the (empty) NULL-cursor phase, then the first page
    assert len(list(records)) == 2499
    assert len(pages()) == 4
    for statement, parameters in pages():
        assert "LIMIT" in statement.upper()
        assert 1000 in _parameter_values(parameters)
    unlimited = [s for s, _ in statements if s.lstrip().upper().startswith("SELECT")
                 and "customers" in s and "count(" not in s.lower() and "LIMIT" not in s.upper()]
    assert unlimited == []


def test_fetch_reads_current_rows_in_bounded_in_lists(source: Source, connect: Connect) -> None:
    """fetch() converts text keys, skips unusable ones, and asks at most 500 keys per statement."""
    table = source.customers()
    source.insert(table, [row(k, T0) for k in range(1, 1201)])
    source.execute("UPDATE customers SET email = 'new@example.com' WHERE id = 3")
    connector = connect(source.url)

    with capture_logs() as logs:
        found = list(connector.fetch(["3", "1", "1", "424242", "abc"]))
    assert keys(found) == [1, 3]
    assert found[1].values["email"] == "new@example.com"
    assert {"event": "sql.fetch_unusable_keys", "count": 1} in [
        {"event": e["event"], "count": e.get("count")} for e in logs]

    statements = _statements(connector.engine)
    assert len(list(connector.fetch([str(k) for k in range(1, 1201)]))) == 1200
    in_lists = [s for s, _ in statements if "FROM customers" in s and " IN " in s]
    assert len(in_lists) == 3


# NULLs and deletes -----------------------------------------------------------------------------
def test_null_cursor_rows_come_first_on_a_full_read_only(source: Source, connect: Connect) -> None:
    """NULL-cursor rows are read first (in key order, counted in the log) by a full read only."""
    table = source.customers()
    source.insert(table, [row(1, T0), row(4, None), row(3, T0 + timedelta(seconds=1)),
                          row(2, None)])
    connector = connect(source.url, lookback=0, fetch_size=1)

    with capture_logs() as logs:
        records = list(connector.read(None))
    assert keys(records) == [2, 4, 1, 3]
    assert [r.cursor for r in records][:2] == [None, None]
    assert [e["count"] for e in logs if e["event"] == "sql.null_cursor_rows"] == [2]
    assert keys(connector.read(Position(T0, 1))) == [3]
    assert keys(connector.read(Position(None, 2))) == [4, 1, 3]


def test_null_key_rows_are_skipped_and_counted(source: Source, connect: Connect) -> None:
    """Rows without a key cannot be tracked: never yielded, no error, their number logged."""
    leads = sa.Table("leads", source.metadata, sa.Column("id", sa.Integer, nullable=True),
                     sa.Column("updated_at", sa.DateTime, nullable=True))
    leads.create(source.engine)
    source.insert(leads, [{"id": 1, "updated_at": T0}, {"id": None, "updated_at": T0},
                          {"id": 2, "updated_at": T0}, {"id": None, "updated_at": None}])

    with capture_logs() as logs:
        records = list(connect(source.url, table="leads", fetch_size=1).read(None))
    assert keys(records) == [1, 2]
    assert [e["count"] for e in logs if e["event"] == "sql.null_key_rows"] == [2]


@pytest.mark.parametrize("column", ["deleted_at", "is_deleted"])
def test_deleted_column_marks_soft_deleted_rows(
    source: Source, connect: Connect, column: str
) -> None:
    """A non-NULL timestamp or a true flag in deleted_column yields the row with deleted=True."""
    table = source.customers()
    source.insert(table, [row(1, T0), row(2, T0, deleted_at=T0, is_deleted=True), row(3, T0)])
    records = list(connect(source.url, deleted_column=column).read(None))
    assert [r.deleted for r in records] == [False, True, False]


def test_columns_setting_limits_values_but_keeps_key_and_cursor(
    source: Source, connect: Connect
) -> None:
    """`columns` chooses the values; key, cursor and deleted_column are always read too."""
    table = source.customers()
    source.insert(table, [row(1, T0)])
    (record,) = connect(source.url, columns=["email"], deleted_column="deleted_at").read(None)
    assert list(record.values) == ["email", "id", "updated_at", "deleted_at"]


# errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "named"),
    [({"cursor": "changed_at"}, "changed_at"), ({"key": "uid"}, "uid"),
     ({"columns": ["email", "phone"]}, "phone"), ({"deleted_column": "removed"}, "removed")],
)
def test_missing_column_is_a_config_error_naming_it(
    source: Source, connect: Connect, options: dict[str, Any], named: str
) -> None:
    """A configured column that is not there: ConfigError naming it, the table and what exists."""
    source.customers()
    with pytest.raises(ConfigError) as info:
        connect(source.url, **options).check()
    message = str(info.value)
    assert f"column '{named}'" in message
    assert "table customers" in message
    assert "updated_at" in message


def test_missing_column_in_query_mode_is_a_config_error(source: Source, connect: Connect) -> None:
    """In query mode the message names the column and lists what the query returns."""
    source.customers()
    with pytest.raises(ConfigError, match=r"column 'changed_at' \(`cursor`\) not found in `query`"):
        connect(source.url, query="SELECT id, email FROM customers", cursor="changed_at").check()


@pytest.mark.parametrize("mode", ["table", "query"])
def test_missing_table_is_a_config_error_naming_it(
    source: Source, connect: Connect, mode: str
) -> None:
    """A table that does not exist (named directly or inside `query`) is a ConfigError naming it."""
    source.customers()
    options = {"table": "nope_table"} if mode == "table" else {"query": "SELECT * FROM nope_table"}
    with pytest.raises(ConfigError, match="nope_table"):
        connect(source.url, **options).check()


def test_column_dropped_between_runs_is_named(source: Source, connect: Connect) -> None:
    """A column dropped after check() is reported by name on the next read, not as a traceback."""
    table = source.customers()
    source.insert(table, [row(1, T0, version=1)])
    connector = connect(source.url, columns=["email", "version"])
    connector.check()
    source.execute("ALTER TABLE customers DROP COLUMN version")
    with pytest.raises(ConfigError, match="column 'version'"):
        list(connector.read(None))


def test_column_dropped_during_a_read_is_a_source_error(source: Source, connect: Connect) -> None:
    """A column dropped between two pages of one read surfaces as SourceError naming it."""
    table = source.customers()
    source.insert(table, [row(k, T0, version=k) for k in (1, 2, 3)])
    records = connect(source.url, fetch_size=1).read(None)
    next(records)
    source.execute("ALTER TABLE customers DROP COLUMN version")
    with pytest.raises(SourceError, match="version"):
        list(records)


@pytest.mark.parametrize(
    ("url", "shown"),
    [("postgresql+psycopg://crm:s3cret-pw@127.0.0.1:1/crm", "crm:***@127.0.0.1:1/crm"),
     ("mysql+pymysql://crm:s3cret-pw@127.0.0.1:1/crm", "crm:***@127.0.0.1:1/crm"),
     ("sqlite:////nonexistent-dir/s3cret-pw/crm.db", "nonexistent-dir")],
)
def test_unreachable_database_is_a_source_error_without_the_password(
    connect: Connect, url: str, shown: str
) -> None:
    """Connection refused: SourceError naming the URL with its password masked."""
    with pytest.raises(SourceError) as info:
        connect(url).check()
    message = str(info.value)
    assert shown in message
    if "sqlite" not in url:
        assert "s3cret-pw" not in message


# engine specifics --------------------------------------------------------------------------------
def test_sqlite_datetime_text_in_another_form(sqlite_url: str, connect: Connect) -> None:
    """SQLite text like '2024-03-01T09:00:00' is refused in table mode, read exactly as a query."""
    lite = Source(sqlite_url)
    lite.customers()
    for key in (1, 2, 3):
        lite.execute(f"INSERT INTO customers (id, email, updated_at) "
                     f"VALUES ({key}, 'c{key}@example.com', '2024-03-01T09:00:00')")
    lite.engine.dispose()

    with pytest.raises(SourceError, match=re.escape("YYYY-MM-DD HH:MM:SS.ffffff")):
        list(connect(sqlite_url).read(None))

    as_query = connect(sqlite_url, query="SELECT * FROM customers", fetch_size=1, lookback=0)
    records = list(as_query.read(None))
    assert keys(records) == [1, 2, 3]
    assert records[0].cursor == "2024-03-01T09:00:00"
    assert list(as_query.read(records[-1].position)) == []


def test_schema_setting_reads_a_table_in_another_schema(pg_url: str, connect: Connect) -> None:
    """On PostgreSQL, `schema` qualifies the table; 'crm.customers' as a table name gets a hint."""
    pg = Source(pg_url)
    pg.execute("CREATE SCHEMA crm")
    table = sa.Table("customers", pg.metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("updated_at", sa.DateTime), schema="crm")
    table.create(pg.engine)
    pg.insert(table, [{"id": 1, "updated_at": T0}])
    pg.engine.dispose()

    assert keys(connect(pg_url, schema="crm").read(None)) == [1]
    with pytest.raises(ConfigError, match="set `schema`"):
        connect(pg_url, table="crm.customers").check()


def test_fetch_from_an_empty_query_source_returns_nothing(source: Source, connect: Connect) -> None:
    """With no row to learn the key's type from, fetch() yields nothing rather than failing."""
    source.customers()
    assert list(connect(source.url, query="SELECT * FROM customers").fetch(["1", "x"])) == []
