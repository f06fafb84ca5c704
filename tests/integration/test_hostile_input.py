"""Hostile input through the command line (issue 8), against the Mailtrap double on a real port.

Per-row problems (an integer beyond range, a value the driver cannot decode, lenient text) end
with exit 0, the other rows synced and the bad row in ``rejects`` with a reason naming its key,
column and the value's kind. Configuration problems (a mixed-type cursor, a missing column, a
lookback that does not fit, a writing query, a missing SQLite file, strictly typed settings)
end with exit 2 from ``check`` and from ``sync``, naming the culprit, and create no list. No
command shows a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.connectors.sql import SqlConnector, SqlSourceSettings
from sync_service.testing.mailtrap.double import MailtrapDouble

TOKEN = "tok-3c1e5a90b2d4f6"
FIELDS = {"name": "text", "seats": "integer", "score": "float", "since": "date"}
CONFIG = """
[state]
url = "sqlite:///{state}"

[mailtrap]
poll_interval = 0.05
{mailtrap}

[[pipelines]]
name = "people"
lists = ["People"]
{pipeline}

[pipelines.source]
connector = "sql"
url = "{source}"
{source_extra}
key = "id"
cursor = "{cursor}"
lookback = {lookback}

[pipelines.mapping]
email = "email"

[pipelines.mapping.fields]
{fields}
"""


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _flat(result: Result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in result.output, result.output


@dataclass
class Setup:
    """A pipeline ``people`` over a source table, a config file, and the double behind it."""

    tmp: Path
    double: MailtrapDouble
    source_url: str

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.source_url)
        self.config = self.tmp / "mailtrap-sync.toml"

    def execute(self, *statements: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)

    def write(self, *, table: str = "people", query: str | None = None,
              cursor: str = "updated_at", lookback: str = "0", mailtrap: str = "",
              pipeline: str = "", fields: dict[str, str] | None = None,
              source_url: str | None = None) -> None:
        extra = f'query = """{query}"""' if query else f'table = "{table}"'
        mapped = {tag: tag for tag in FIELDS} if fields is None else fields
        self.config.write_text(CONFIG.format(
            state=self.tmp / "state.db", source=source_url or self.source_url,
            source_extra=extra, cursor=cursor, lookback=lookback, mailtrap=mailtrap,
            pipeline=pipeline, fields="\n".join(f'{t} = "{c}"' for t, c in mapped.items())))

    def run(self, *args: str) -> Result:
        result = _cli("--config", str(self.config), *args)
        _no_traceback(result)
        return result

    def rejects(self) -> dict[str, dict[str, Any]]:
        result = self.run("rejects", "people", "--json")
        assert result.exit_code == 0, result.output
        return {row["source_key"]: row for row in orjson.loads(result.stdout)}

    def sent(self) -> dict[str, dict[str, Any]]:
        return {email: dict(c.fields) for email, c in self.double.contacts().items()}


@pytest.fixture
def served(double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """The double on a real port with the fields mapped here, and the environment set for it."""
    double.grant(TOKEN, 1001)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return mailtrap_server


def _setup(tmp_path: Path, double: MailtrapDouble, url: str) -> Iterator[Setup]:
    made = Setup(tmp_path, double, url)
    yield made
    made.engine.dispose()


@pytest.fixture
def lite(tmp_path: Path, double: MailtrapDouble, served: str) -> Iterator[Setup]:
    """A SQLite source file (created by the first statement) and its config."""
    yield from _setup(tmp_path, double, f"sqlite:///{tmp_path}/crm.db")


@pytest.fixture
def pg(tmp_path: Path, double: MailtrapDouble, served: str, pg_url: str) -> Iterator[Setup]:
    """A PostgreSQL source database and its config."""
    yield from _setup(tmp_path, double, pg_url)


PEOPLE = ("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, name TEXT, seats {seats}, "
          "score TEXT, since {since}, updated_at {at})")


def _rows(setup: Setup, count: int, *, at: str = "2026-03-01 12:00:{:02d}.000000") -> None:
    for key in range(1, count + 1):
        setup.execute("INSERT INTO people (id, email, name, seats, score, since, updated_at) "
                      "VALUES (:id, :email, :name, :seats, '1.5', :since, :at)",
                      id=key, email=f"p{key}@example.com", name=f"P{key}", seats=key,
                      since="2024-02-03", at=at.format(key))


# case 1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["sqlite",
                                    pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_integer_beyond_range_rejects_its_row_only(engine: str, request: pytest.FixtureRequest
                                                   ) -> None:
    """An integer beyond ±(2**53-1) (a 70-bit NUMERIC, or digits in text) rejects its row with a
    reason naming the field; `plan` and `sync` exit 0 and the other rows are sent."""
    setup: Setup = request.getfixturevalue("lite" if engine == "sqlite" else "pg")
    numeric = "NUMERIC(40, 0)" if engine == "postgresql" else "TEXT"
    setup.execute(PEOPLE.format(seats=numeric, since="DATE", at="TIMESTAMP"))
    _rows(setup, 3)
    # SQLite binds no integer beyond 64 bits: there the digits are text in a TEXT column.
    setup.execute("UPDATE people SET seats = :big WHERE id = 2",
                  big=2**70 if engine == "postgresql" else str(2**70))
    setup.write()

    plan = setup.run("plan", "people", "--json")
    assert plan.exit_code == 0, plan.output
    sync = setup.run("sync")
    assert sync.exit_code == 0, sync.output
    assert sorted(setup.sent()) == ["p1@example.com", "p3@example.com"]
    reason = setup.rejects()["2"]["reason"]
    assert "seats" in reason
    assert "outside the integer range" in reason


# case 3 ------------------------------------------------------------------------------------------
def test_value_sqlite_cannot_decode_rejects_its_row_naming_key_and_column(lite: Setup) -> None:
    """'yesterday' in a SQLite DATE column (and in a DATETIME one) rejects that row naming the key,
    the column and the value's kind, never the value; every other row is synced (exit 0)."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"),
                 "ALTER TABLE people ADD COLUMN seen DATETIME")
    _rows(lite, 4, at="2026-03-01 12:00:{:02d}.000000")
    lite.execute("UPDATE people SET since = 'yesterday' WHERE id = 2",
                 "UPDATE people SET seen = 'yesterday' WHERE id = 3")
    lite.write()

    result = lite.run("sync")
    assert result.exit_code == 0, result.output
    assert sorted(lite.sent()) == ["p1@example.com", "p4@example.com"]
    rejects = lite.rejects()
    assert set(rejects) == {"2", "3"}
    assert rejects["2"]["kind"] == "invalid_value"
    assert "column since holds a text value that its DATE type cannot decode (key '2')" in \
        rejects["2"]["reason"]
    assert "column seen" in rejects["3"]["reason"]
    assert "yesterday" not in result.output + str(rejects)


def test_sqlite_text_that_is_not_utf8_rejects_its_row_only(lite: Setup) -> None:
    """Bytes that are not UTF-8 in a SQLite text column (which sqlite3 refuses to decode for the
    whole page) reject that row naming key and column, not showing the bytes; others sync."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"))
    _rows(lite, 3)
    lite.execute("UPDATE people SET name = CAST(X'41FF80' AS TEXT) WHERE id = 2")
    lite.write()
    result = lite.run("sync")
    assert result.exit_code == 0, result.output
    assert sorted(lite.sent()) == ["p1@example.com", "p3@example.com"]
    assert lite.rejects()["2"]["reason"] == "column name holds text that is not valid UTF-8 (key 2)"


@pytest.mark.postgres
def test_postgresql_infinity_and_bc_dates_reject_their_row_only(pg: Setup) -> None:
    """PostgreSQL 'infinity' and BC dates (which Python cannot hold) reject their row naming the
    key and column; the other rows are synced and `check`, `plan` and `sync` exit 0."""
    pg.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="TIMESTAMP"),
               "ALTER TABLE people ADD COLUMN seen TIMESTAMPTZ")
    _rows(pg, 4)
    pg.execute("UPDATE people SET since = 'infinity' WHERE id = 2",
               "UPDATE people SET seen = '-infinity' WHERE id = 3",
               "UPDATE people SET since = '0044-03-15 BC' WHERE id = 4")
    pg.write()

    assert pg.run("check").exit_code == 0
    assert pg.run("plan", "people").exit_code == 0
    result = pg.run("sync")
    assert result.exit_code == 0, result.output
    assert list(pg.sent()) == ["p1@example.com"]
    rejects = pg.rejects()
    assert rejects["2"]["reason"] == ("column since holds a date value Python cannot represent "
                                      "(infinity, or before year 1) (key '2')")
    assert "column seen holds a timestamptz value" in rejects["3"]["reason"]
    assert "column since" in rejects["4"]["reason"]


# case 5 ------------------------------------------------------------------------------------------
def test_cursor_of_mixed_types_is_a_configuration_error(lite: Setup) -> None:
    """A SQLite cursor column holding integers, text and reals is refused by `check` and `sync`
    with exit 2 naming the column and the types; nothing is sent and no list created."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"),
                 "ALTER TABLE people ADD COLUMN version")
    _rows(lite, 5)
    for key, version in zip(range(1, 6), (1, "2", 10, "abc", 2.5), strict=True):
        lite.execute("UPDATE people SET version = :v WHERE id = :id", v=version, id=key)
    lite.write(cursor="version")

    for command in ("check", "sync"):
        result = lite.run(command)
        assert result.exit_code == 2, result.output
        assert "cursor column 'version'" in result.output
        assert "number" in result.output
        assert "text" in result.output
    assert lite.sent() == {}
    assert lite.double.lists() == {}


# cases 8, 9 --------------------------------------------------------------------------------------
def test_mapping_of_a_missing_column_fails_check_and_sync_with_exit_2(lite: Setup) -> None:
    """A mapped column the source does not have: `check` and `sync` exit 2 naming it, and the run
    creates no list in Mailtrap."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"))
    _rows(lite, 2)
    lite.write(fields={"name": "name", "seats": "seat_count"})

    check = lite.run("check")
    assert check.exit_code == 2, check.output
    assert "seat_count (mapping.fields.seats)" in check.output
    sync = lite.run("sync")
    assert sync.exit_code == 2, sync.output
    assert "seat_count" in sync.output
    assert lite.double.lists() == {}
    assert lite.sent() == {}


def test_time_lookback_on_a_numeric_cursor_fails_check_and_sync(lite: Setup) -> None:
    """lookback = "5m" on an integer cursor: `check` and the first `sync` exit 2 naming the
    column, instead of the second run failing."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="INTEGER"))
    _rows(lite, 2, at="{}")
    lite.write(lookback='"5m"')

    for command in ("check", "sync"):
        result = lite.run(command)
        assert result.exit_code == 2, result.output
        assert "lookback" in result.output
        assert "'updated_at'" in result.output
    lite.write(lookback="3")
    assert lite.run("check").exit_code == 0
    assert lite.run("sync").exit_code == 0
    assert len(lite.sent()) == 2


# case 10 -----------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_query_that_writes_is_refused_on_postgresql(pg: Setup) -> None:
    """A `query` calling nextval() runs read-only: `check` and `sync` exit 2 saying the source is
    read-only, and the sequence has not advanced."""
    pg.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="TIMESTAMP"),
               "CREATE SEQUENCE side_effect")
    _rows(pg, 2)
    pg.write(query="SELECT p.*, nextval('side_effect') AS n FROM people p")

    for command in ("check", "sync"):
        result = pg.run(command)
        assert result.exit_code == 2, result.output
        assert "the source is read-only" in result.output
    with pg.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT last_value, is_called FROM side_effect")).one() == (
            1, False)


@pytest.mark.mariadb
def test_query_that_writes_is_refused_on_mariadb(tmp_path: Path, double: MailtrapDouble,
                                                 served: str, mariadb_url: str) -> None:
    """A `query` calling a function that inserts into a MyISAM table: exit 2 saying the source is
    read-only, and the table stays empty."""
    setup = Setup(tmp_path, double, mariadb_url)
    try:
        setup.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME(6)"),
                      "CREATE TABLE audit (id INTEGER) ENGINE=MyISAM",
                      "CREATE FUNCTION touch() RETURNS INTEGER MODIFIES SQL DATA "
                      "BEGIN INSERT INTO audit VALUES (1); RETURN 1; END")
        _rows(setup, 2)
        setup.write(query="SELECT p.*, touch() AS n FROM people p")
        for command in ("check", "sync"):
            result = setup.run(command)
            assert result.exit_code == 2, result.output
            assert "the source is read-only" in result.output
        with setup.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM audit")).scalar() == 0
    finally:
        setup.engine.dispose()


def test_sqlite_source_connections_are_read_only(lite: Setup) -> None:
    """A SQLite source is opened with query_only: a statement that writes through the
    connector's connections is refused, and the table keeps its rows."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"))
    _rows(lite, 2)
    connector = SqlConnector(SqlSourceSettings(url=lite.source_url, table="people", key="id",
                                               cursor="updated_at"))
    try:
        with connector.engine.connect() as conn, pytest.raises(sa.exc.OperationalError,
                                                               match="readonly"):
            conn.execute(sa.text("DELETE FROM people"))
        assert len(list(connector.read(None))) == 2
    finally:
        connector.close()
    with lite.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM people")).scalar() == 2


# case 11 -----------------------------------------------------------------------------------------
def test_unreachable_mailtrap_fails_check_fast_and_sync_after_its_budget(
        lite: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mailtrap refusing connections: `check` fails within seconds, `sync` gives up after
    mailtrap.unreachable_timeout, each naming the URL (not after minutes of silent retries)."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"))
    _rows(lite, 1)
    monkeypatch.setenv("MAILTRAP_API_URL", "http://127.0.0.1:9")
    lite.write(mailtrap="unreachable_timeout = 2")

    started = time.monotonic()
    check = lite.run("check")
    assert check.exit_code == 1, check.output
    assert "Mailtrap at http://127.0.0.1:9 cannot be reached" in check.output
    sync = lite.run("sync")
    assert sync.exit_code == 1, sync.output
    assert "Mailtrap at http://127.0.0.1:9 cannot be reached" in sync.output
    assert "gave up after" in sync.output
    assert time.monotonic() - started < 60  # was ~190 s for `check` alone


# case 13 -----------------------------------------------------------------------------------------
def test_lenient_text_is_rejected_not_guessed(lite: Setup) -> None:
    """'1_5' is not a number and '2025-01-01garbage' is not a date: those rows are rejected with
    reasons naming the field; the others are sent (exit 0)."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="TEXT", at="DATETIME"))
    _rows(lite, 3)
    lite.execute("UPDATE people SET score = '1_5' WHERE id = 1",
                 "UPDATE people SET since = '2025-01-01garbage' WHERE id = 2")
    lite.write()
    result = lite.run("sync")
    assert result.exit_code == 0, result.output
    assert list(lite.sent()) == ["p3@example.com"]
    rejects = lite.rejects()
    assert "field score (column score) '1_5' is not a number" in rejects["1"]["reason"]
    assert "field since" in rejects["2"]["reason"]


@pytest.mark.parametrize(("setting", "where"), [
    ("batch_size = true", "batch_size"),
    ("batch_size = 1.0", "batch_size"),
    ('batch_size = "10"', "batch_size"),
    ("[pipelines.mailtrap_typo]\nx = 1", "mailtrap_typo"),
])
def test_settings_of_the_wrong_type_are_configuration_errors(lite: Setup, setting: str,
                                                             where: str) -> None:
    """Settings are strict: a boolean, float or text where a count goes exits 2 naming the key."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"))
    lite.write(pipeline=setting)
    result = lite.run("check")
    assert result.exit_code == 2, result.output
    assert where in result.output


def test_missing_sqlite_source_is_an_error_and_is_not_created(lite: Setup) -> None:
    """A SQLite source path that does not exist: exit 2 naming it; no empty file appears and no
    list is created in Mailtrap."""
    missing = lite.tmp / "typo" / "crm.db"
    lite.write(source_url=f"sqlite:///{missing}")
    for command in ("check", "sync"):
        result = lite.run(command)
        assert result.exit_code == 2, result.output
        assert "does not exist" in _flat(result)
        assert str(missing) in _flat(result)
    assert not missing.exists()
    assert lite.double.lists() == {}


def test_failed_run_creates_no_list_but_a_good_one_does(lite: Setup) -> None:
    """Lists are created once a run goes ahead: a run failing on an unknown merge tag creates
    none; the run after the fix creates the list and sends the rows."""
    lite.execute(PEOPLE.format(seats="INTEGER", since="DATE", at="DATETIME"))
    _rows(lite, 2)
    lite.write(fields={"name": "name", "nickname": "name"})
    failed = lite.run("sync")
    assert failed.exit_code == 2, failed.output
    assert "nickname" in failed.output
    assert lite.double.lists() == {}
    lite.write()
    assert lite.run("sync").exit_code == 0
    assert list(lite.double.lists().values()) == ["People"]
    assert len(lite.sent()) == 2



