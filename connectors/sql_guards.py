"""Guards of the SQL connector against a source that would mislead it.

- **Read-only.** Every connection is made read-only where the database supports it: SQLite
  ``PRAGMA query_only``, PostgreSQL ``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY``,
  MariaDB/MySQL ``SET SESSION TRANSACTION READ ONLY`` (each transaction then runs as ``START
  TRANSACTION READ ONLY`` would). A ``query`` that tries to write (a function with side effects,
  ``nextval``) fails with a ``ConfigError`` saying the source is read-only.
- **A SQLite file that does not exist** is a ``ConfigError``: opening it would create an empty
  database and a typo'd path would look like an empty source.
- **A cursor whose values do not order as one type** (SQLite keeps integers, reals and text side
  by side in one column) is a ``ConfigError`` naming the column and the types: text sorts after
  every number there, so a watermark of one type would skip rows of the other.
- **Values PostgreSQL holds but Python cannot** ('infinity' dates and timestamps, dates before
  year 1) arrive as ``Undecodable`` instead of failing the whole page (psycopg loaders wrapped
  on each new connection), so only their row is rejected.
- **A lookback that does not fit the cursor** (a duration on a numeric cursor) is found by
  ``check``, not by the second run.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from sync_service.errors import ConfigError

from .sql_settings import SqlSourceSettings
from .sql_source import SourceShape
from .sql_values import Undecodable, lookback_start

# SQLite's storage classes that order with each other (integer and real compare as numbers).
_SQLITE_CLASSES = {"integer": "number", "real": "number", "text": "text", "blob": "binary"}
_SAMPLES: dict[type, Any] = {int: 0, float: 0.0, Decimal: Decimal(0),
                             datetime: datetime(2000, 1, 1), date: date(2000, 1, 1)}


def sqlite_file_exists(url: URL, where: str) -> None:
    """A SQLite source must name an existing file (``:memory:`` and URI mode are left alone)."""
    if url.get_backend_name() != "sqlite":
        return
    database = url.database
    if not database or database == ":memory:" or str(url.query.get("uri", "")).lower() == "true":
        return
    if not Path(database).is_file():
        raise ConfigError(
            f"{where}: the SQLite source file {database} does not exist (a missing file would "
            "be created empty and read as an empty source); check the path in `url`"
        )


def make_read_only(engine: Engine) -> None:
    """Every new connection of ``engine`` refuses writes (see the module docstring)."""
    backend = engine.dialect.name
    statement = {
        "sqlite": "PRAGMA query_only = ON",
        "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "mysql": "SET SESSION TRANSACTION READ ONLY",
        "mariadb": "SET SESSION TRANSACTION READ ONLY",
    }.get(backend)
    if statement is None:
        return

    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        if backend != "sqlite":  # the session setting must outlive the transaction it ran in
            dbapi_connection.commit()

    sa.event.listen(engine, "connect", _on_connect)


def tolerate_undecodable(engine: Engine) -> None:
    """PostgreSQL (psycopg): date and timestamp values out of Python's range load as
    ``Undecodable`` rather than raising for the whole result."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return
    sa.event.listen(engine, "connect", _tolerant_loaders)


def _tolerant_loaders(dbapi_connection: Any, _record: Any) -> None:
    import psycopg  # noqa: PLC0415 - only for PostgreSQL sources
    from psycopg.adapt import Loader  # noqa: PLC0415
    from psycopg.pq import Format  # noqa: PLC0415

    adapters = dbapi_connection.adapters
    for name in ("date", "timestamp", "timestamptz"):
        oid = adapters.types[name].oid
        for fmt in (Format.TEXT, Format.BINARY):
            inner_class = adapters.get_loader(oid, fmt)
            if inner_class is None:
                continue

            class _Tolerant(Loader):
                format = fmt
                _inner_class = inner_class
                _sql_type = name

                def __init__(self, oid: int, context: Any = None) -> None:
                    super().__init__(oid, context)
                    self._inner = self._inner_class(oid, context)

                def load(self, data: Any) -> Any:
                    try:
                        return self._inner.load(data)
                    except psycopg.DataError:
                        return Undecodable(self._sql_type)

            adapters.register_loader(oid, _Tolerant)


def check_cursor_order(conn: Connection, shape: SourceShape) -> None:
    """SQLite only: the cursor column must hold values of one ordering class."""
    if conn.dialect.name != "sqlite":
        return
    storage = sa.func.typeof(shape.cursor)
    stmt = (sa.select(storage, sa.func.count()).select_from(shape.selectable)
            .where(shape.cursor.is_not(None)).group_by(storage))
    counts: dict[str, int] = {}
    for name, count in conn.execute(stmt).all():
        kind = _SQLITE_CLASSES.get(str(name), str(name))
        counts[kind] = counts.get(kind, 0) + int(count)
    if len(counts) > 1:
        raise mixed_cursor(shape, counts)


def mixed_cursor(shape: SourceShape, counts: dict[str, int]) -> ConfigError:
    found = ", ".join(f"{kind} ({count} rows)" if count else kind
                      for kind, count in sorted(counts.items()))
    return ConfigError(
        f"cursor column {shape.cursor_name!r} of {shape.label} holds values of types that "
        f"cannot be ordered as one: {found}; rows of one type would never be read after a "
        "watermark of the other. Make the column hold one type (or cast it in `query`)"
    )


_ORDER_CLASSES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"), ((int, float, Decimal), "number"), (datetime, "datetime"),
    (date, "date"), (str, "text"), ((bytes, bytearray, memoryview), "binary"),
)


def order_class(value: Any) -> str:
    """The class of a cursor value for ordering: values of different classes do not compare."""
    for types, name in _ORDER_CLASSES:  # bool before int, datetime before date
        if isinstance(value, types):
            return name
    return type(value).__name__


def check_lookback(conn: Connection, shape: SourceShape, settings: SqlSourceSettings) -> None:
    """The configured lookback must apply to the cursor's values (ConfigError otherwise)."""
    if settings.lookback is None:
        return
    sample = _SAMPLES.get(shape.cursor_type) if shape.cursor_type is not None else None
    if sample is None:
        stmt = (sa.select(shape.cursor).select_from(shape.selectable)
                .where(shape.cursor.is_not(None)).limit(1))
        try:
            sample = conn.execute(stmt).scalar()
        except (ValueError, TypeError, ArithmeticError):  # an undecodable value: rows say so
            return
        if sample is None:
            return
    lookback_start(sample, settings.lookback, column=shape.cursor_name)
