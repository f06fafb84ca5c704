"""Shared fixtures: real databases, one fresh (empty) database per test.

PostgreSQL and MariaDB come from ``MAILTRAP_SYNC_TEST_PG_URL`` and
``MAILTRAP_SYNC_TEST_MARIADB_URL`` (server URLs; each test gets a database of its own on that
server). Without them those tests skip with a reason; with ``MAILTRAP_SYNC_REQUIRE_DBS=1`` (as
``.ci/run`` sets) a missing server fails instead, because in CI a skipped integration test is a
failure. PostgreSQL databases come from ``tests.support.pg_databases``, which wipes a used one
for a later test (when it is then indistinguishable from a new one) rather than paying for
``CREATE DATABASE`` every time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.support.pg_databases import PgDatabases

pytest_plugins = ["tests.support.double_fixtures"]

PG_ENV = "MAILTRAP_SYNC_TEST_PG_URL"
MARIADB_ENV = "MAILTRAP_SYNC_TEST_MARIADB_URL"
REQUIRE_ENV = "MAILTRAP_SYNC_REQUIRE_DBS"


def _server_url(env: str, what: str) -> str:
    url = os.environ.get(env)
    if url:
        return url
    message = f"{what} tests need {env} (a server URL); not set"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message + f", and {REQUIRE_ENV}=1 forbids skipping")
    pytest.skip(message)


def _fresh_database(server: str, *, isolation: str) -> Iterator[str]:
    name = f"mts_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level=isolation)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _unreachable(server, exc)
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def _unreachable(server: str, exc: Exception) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"cannot reach {make_url(server).render_as_string()}: {exc}")
    pytest.skip(f"cannot reach database server: {exc}")


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    """Empty PostgreSQL databases on the test server, for ``pg_url``; dropped at the end."""
    databases = PgDatabases(_server_url(PG_ENV, "PostgreSQL"))
    yield databases
    databases.close()


@pytest.fixture
def pg_url(pg_databases: PgDatabases) -> Iterator[str]:
    """A URL to an empty PostgreSQL database of its own, for this test only."""
    try:
        name = pg_databases.take()
    except sa.exc.OperationalError as exc:
        _unreachable(pg_databases.server, exc)
    try:
        yield pg_databases.url(name)
    finally:
        pg_databases.give_back(name)


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A URL to a new, empty MariaDB database, dropped after the test."""
    yield from _fresh_database(_server_url(MARIADB_ENV, "MariaDB"), isolation="AUTOCOMMIT")


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A URL to a new SQLite file in the test's temporary folder."""
    return f"sqlite:///{tmp_path}/{uuid.uuid4().hex[:8]}.db"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per supported engine (SQLite, PostgreSQL, MariaDB)."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mariadb": "mariadb_url"}[
        request.param
    ]
    url: str = request.getfixturevalue(fixture)
    return url
