"""The PostgreSQL test databases: a wiped database is handed out again only when it is as new."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import PG_ENV, _server_url
from tests.support.pg_databases import PgDatabases, fingerprint

pytestmark = pytest.mark.postgres

_MESS = [
    "CREATE TABLE contacts (id serial PRIMARY KEY, email text UNIQUE)",
    "INSERT INTO contacts (email) VALUES ('a@example.com')",
    "CREATE INDEX contacts_email ON contacts (lower(email))",
    "CREATE VIEW emails AS SELECT email FROM contacts",
    "CREATE TYPE mood AS ENUM ('calm', 'busy')",
    "CREATE SEQUENCE counter",
    "CREATE DOMAIN address AS text CHECK (VALUE LIKE '%@%')",
    "CREATE TYPE pair AS (a int, b int)",
    "CREATE TYPE span AS RANGE (subtype = int8)",
    "CREATE MATERIALIZED VIEW counted AS SELECT count(*) FROM contacts",
    "CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA crm",
    "CREATE TABLE crm.people (id int, mood mood)",
    "COMMENT ON TABLE contacts IS 'made by a test'",
    "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
    "SET search_path TO crm",
]


@pytest.fixture
def databases() -> Iterator[PgDatabases]:
    """A pool of its own, so the test sees every database it hands out."""
    pool = PgDatabases(_server_url(PG_ENV, "PostgreSQL"))
    yield pool
    pool.close()


def _user_objects(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'")).scalars())


def test_a_used_database_comes_back_as_new(databases: PgDatabases) -> None:
    """Tables, views, types, functions, a schema, changed grants, a database setting and an open
    session are all gone when the database is handed out again; it matches a new one."""
    name = databases.take()
    engine = sa.create_engine(databases.url(name))
    left_open = engine.connect()
    with engine.begin() as conn:
        for statement in _MESS:
            conn.execute(sa.text(statement))
        conn.execute(sa.text(f"ALTER DATABASE {name} SET work_mem = '8MB'"))
    left_open.execute(sa.text("SELECT count(*) FROM contacts"))  # a session in a transaction
    databases.give_back(name)
    left_open.invalidate()  # its session was ended
    assert databases.take() == name
    engine.dispose()
    new = databases.take()
    assert new != name
    fresh_engine = sa.create_engine(databases.url(new))
    try:
        with engine.connect() as conn, fresh_engine.connect() as fresh:
            assert fingerprint(conn) == fingerprint(fresh)
            assert conn.execute(sa.text("SHOW work_mem")).scalar_one() == fresh.execute(
                sa.text("SHOW work_mem")).scalar_one()
        assert _user_objects(engine) == []
    finally:
        fresh_engine.dispose()
        engine.dispose()
    assert (databases.created, databases.reused) == (2, 1)


def test_a_database_that_cannot_be_wiped_is_dropped(databases: PgDatabases) -> None:
    """A large object (outside every schema) survives the wipe: that database is dropped and
    the next test gets a new one."""
    name = databases.take()
    engine = sa.create_engine(databases.url(name))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT lo_create(0)"))
    engine.dispose()
    databases.give_back(name)
    assert databases.idle == []
    with databases.admin.connect() as conn:
        exists = sa.text("SELECT count(*) FROM pg_database WHERE datname = :name")
        assert conn.execute(exists, {"name": name}).scalar_one() == 0
    assert databases.take() != name
