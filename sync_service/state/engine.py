"""Engines and transactions for the state store, and where SQLAlchemy errors become StateError.

Supported back ends are SQLite (one host; the default) and PostgreSQL through psycopg 3 (several
replicas). MySQL/MariaDB are refused with a ConfigError: the lease and upsert statements rely on
``INSERT ... ON CONFLICT ... RETURNING``, which they lack.

SQLite connections run in WAL mode with foreign keys on and a 30 s busy timeout. pysqlite's own
transaction handling is switched off and the BEGIN is emitted here instead, so that write
transactions can start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes
can fail at once with "database is locked" when another writer got there first, whatever the busy
timeout, while an immediate one waits its turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from sync_service.errors import ConfigError, StateError

DEFAULT_URL = "sqlite:///mailtrap-sync.db"
SUPPORTED = "sqlite:///path.db or postgresql+psycopg://user@host/db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10

# Execution option a write transaction sets so that the SQLite "begin" hook says IMMEDIATE.
_WRITE_OPTION = "mailtrap_sync_write"


def create_state_engine(url: str | URL) -> Engine:
    """An engine for a state store URL; ConfigError for what is malformed or unsupported."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        # The exception text repeats the URL, password included, so it is not passed on.
        raise ConfigError(f"the state store URL cannot be parsed; expected {SUPPORTED}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.get_driver_name() == "pysqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg"):
        return _postgres_engine(parsed.set(drivername="postgresql+psycopg"))
    raise ConfigError(
        f"state store {parsed.drivername!r} is not supported; use {SUPPORTED}"
    )


def safe_url(engine: Engine) -> str:
    """The engine's URL with the password masked, for messages and logs."""
    return engine.url.render_as_string(hide_password=True)


@contextmanager
def transaction(engine: Engine, what: str, *, write: bool) -> Iterator[Connection]:
    """One transaction on its own connection; SQLAlchemy errors leave as StateError.

    ``what`` names the operation in the error message. ``write`` asks SQLite for the write lock
    up front (see the module docstring); PostgreSQL ignores it.
    """
    try:
        conn = engine.connect()
    except SQLAlchemyError as exc:
        raise StateError(
            f"cannot reach the state store at {safe_url(engine)}: {describe(exc)}"
        ) from exc
    with conn:
        if write:
            conn.execution_options(**{_WRITE_OPTION: True})
        try:
            with conn.begin():
                yield conn
        except (SQLAlchemyError, _driver_error(engine)) as exc:
            raise StateError(
                f"state store {what} failed ({safe_url(engine)}): {describe(exc)}"
            ) from exc


def _driver_error(engine: Engine) -> type[Exception]:
    # The driver's own base error, for work done on the raw connection (PostgreSQL's COPY),
    # which SQLAlchemy does not wrap.
    error: type[Exception] = engine.dialect.loaded_dbapi.Error
    return error


def describe(exc: BaseException) -> str:
    """The first line of the driver's message: no SQL, and no parameters (emails, 50,000 rows)."""
    origin: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        origin = exc.orig
    lines = str(origin).strip().splitlines()
    return f"{type(origin).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _sqlite_engine(url: URL) -> Engine:
    if url.database in (None, "", ":memory:"):
        # One shared connection, or every checkout would see a different empty database.
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = sa.create_engine(url)
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # BEGIN is emitted by _sqlite_on_begin
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so that switching to WAL waits for a lock instead of failing.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        # libpq waits forever by default; an unreachable store should fail a run, not hang it.
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "mailtrap-sync"
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
