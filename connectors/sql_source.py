"""What the SQL connector reads from: a reflected table or a wrapped query, checked against the
settings, and how one of its rows becomes a ``SourceRecord``.

``describe`` runs at the start of every check, read and fetch, so a column that disappeared
between runs is reported by name (``ConfigError``) rather than as a failing statement.

- ``table`` mode reflects the columns: values come back typed by SQLAlchemy (SQLite's text
  datetimes become ``datetime``), and watermarks are bound with the column's own type.
- ``query`` mode wraps the query as a subquery (``SELECT ... FROM (<query>) AS src``) whose
  column names come from running it with ``LIMIT 0``. Values are what the driver returns; on
  SQLite a datetime stays the text it is stored as, and is compared as that text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from sync_service.errors import ConfigError, SourceError
from sync_service.models import SourceRecord

from .sql_settings import SqlSourceSettings
from .sql_values import is_deleted

_RAW_CURSOR = "_mts_raw_cursor"
_MAX_LISTED = 40


@dataclass(frozen=True, slots=True)
class SourceShape:
    """The source as the connector queries it, with what it knows of the key and cursor types."""

    label: str
    selectable: sa.FromClause
    names: tuple[str, ...]
    key_name: str
    cursor_name: str
    deleted_name: str | None
    key_type: type | None = None
    cursor_type: type | None = None
    cursor_timezone: bool | None = None
    key_nullable: bool = True
    # SQLite only: how SQLAlchemy writes a cursor value as text, to verify the stored text matches.
    cursor_as_text: Callable[[Any], Any] | None = None

    @property
    def key(self) -> sa.ColumnElement[Any]:
        return self.selectable.c[self.key_name]

    @property
    def cursor(self) -> sa.ColumnElement[Any]:
        return self.selectable.c[self.cursor_name]

    def select(self) -> sa.Select[Any]:
        """SELECT of the configured columns (plus the raw cursor text where it is verified)."""
        columns: list[sa.ColumnElement[Any]] = [self.selectable.c[n] for n in self.names]
        if self.cursor_as_text is not None:
            columns.append(sa.type_coerce(self.cursor, sa.String()).label(_RAW_CURSOR))
        return sa.select(*columns).select_from(self.selectable)

    def record(self, row: sa.Row[Any]) -> SourceRecord:
        """The row as a record; ``values`` holds every selected column by name."""
        values = dict(zip(self.names, row, strict=False))
        cursor = values[self.cursor_name]
        if self.cursor_as_text is not None and cursor is not None:
            self._check_text(self.cursor_as_text, cursor, row[len(self.names)])
        deleted = self.deleted_name is not None and is_deleted(values[self.deleted_name])
        return SourceRecord(values[self.key_name], cursor, values, deleted)

    def _check_text(self, writer: Callable[[Any], Any], cursor: Any, stored: Any) -> None:
        written = writer(cursor)
        if written != stored:
            raise SourceError(
                f"cursor column {self.cursor_name!r} of {self.label} holds the text {stored!r}, "
                f"which SQLite compares as text but SQLAlchemy writes as {written!r}; paging by "
                "this column would skip or repeat rows. Store datetimes as "
                "'YYYY-MM-DD HH:MM:SS.ffffff', or read through `query` so the cursor is the text"
            )


def describe(conn: Connection, settings: SqlSourceSettings) -> SourceShape:
    """Reflect the table (or run the query with LIMIT 0) and check the configured columns."""
    if settings.query is not None:
        return _describe_query(conn, settings, settings.query)
    if settings.table is not None:
        return _describe_table(conn, settings, settings.table)
    raise ConfigError("set exactly one of `table` or `query`")


def _describe_table(conn: Connection, settings: SqlSourceSettings, table: str) -> SourceShape:
    schema = settings.db_schema
    label = f"table {schema}.{table}" if schema else f"table {table}"
    inspector = sa.inspect(conn)
    try:
        reflected = inspector.get_columns(table, schema=schema)
    except sa.exc.NoSuchTableError:
        reflected = []
    if not reflected:
        raise ConfigError(_missing_table(inspector, settings, label))
    by_name = {column["name"]: column for column in reflected}
    names = _selected(settings, list(by_name), label)
    clause = sa.table(table, *(sa.column(c["name"], c["type"]) for c in reflected), schema=schema)
    key_type = by_name[settings.key]["type"]
    cursor_type = by_name[settings.cursor]["type"]
    cursor_python = python_type(cursor_type)
    timezone = getattr(cursor_type, "timezone", None) if cursor_python is datetime else None
    return SourceShape(
        label=label,
        selectable=clause,
        names=names,
        key_name=settings.key,
        cursor_name=settings.cursor,
        deleted_name=settings.deleted_column,
        key_type=python_type(key_type),
        cursor_type=cursor_python,
        cursor_timezone=timezone,
        key_nullable=bool(by_name[settings.key].get("nullable", True)),
        cursor_as_text=_sqlite_text_writer(conn.dialect, cursor_type, cursor_python),
    )


def _missing_table(inspector: sa.Inspector, settings: SqlSourceSettings, label: str) -> str:
    try:
        known = [*inspector.get_table_names(settings.db_schema),
                 *inspector.get_view_names(settings.db_schema)]
    except sa.exc.SQLAlchemyError:
        known = []
    listed = ", ".join(sorted(known)[:_MAX_LISTED]) or "none"
    hint = ""
    if settings.table and "." in settings.table and settings.db_schema is None:
        hint = "; to name a schema, set `schema` rather than writing schema.table"
    return f"{label} not found (`table`); tables and views there: {listed}{hint}"


def _describe_query(conn: Connection, settings: SqlSourceSettings, query: str) -> SourceShape:
    # Escape colons so the query's own text (e.g. '10:30' or PostgreSQL's ::casts) is never taken
    # for a bound parameter; the connector binds its values outside the wrapped query.
    text = sa.text(query.replace(":", "\\:"))
    unnamed = text.columns().subquery("src")
    probe: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(unnamed).limit(0)
    try:
        result = conn.execute(probe)
        names = list(result.keys())
        result.close()
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        raise ConfigError(f"`query` cannot be run: {reason(exc)}") from exc
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"`query` returns column(s) {', '.join(twice)} more than once; give each a unique "
            "name with AS"
        )
    label = "`query`"
    subquery = text.columns(*(sa.column(n) for n in names)).subquery("src")
    return SourceShape(
        label=label,
        selectable=subquery,
        names=_selected(settings, names, label),
        key_name=settings.key,
        cursor_name=settings.cursor,
        deleted_name=settings.deleted_column,
    )


def _selected(settings: SqlSourceSettings, available: list[str], label: str) -> tuple[str, ...]:
    """The columns to read, in order: ``columns`` (default all), then key, cursor, deleted."""
    wanted = [("key", settings.key), ("cursor", settings.cursor)]
    if settings.deleted_column is not None:
        wanted.append(("deleted_column", settings.deleted_column))
    wanted += [("columns", name) for name in settings.columns or ()]
    for setting, name in wanted:
        if name not in available:
            raise ConfigError(
                f"column {name!r} (`{setting}`) not found in {label}; available columns: "
                f"{', '.join(available)}"
            )
    first = list(settings.columns) if settings.columns else available
    return tuple(dict.fromkeys([*first, *(name for _, name in wanted)]))


def _sqlite_text_writer(
    dialect: Dialect, column_type: sa.types.TypeEngine[Any], python: type | None
) -> Callable[[Any], Any] | None:
    """On SQLite, the function turning a typed cursor back into the text SQLAlchemy binds."""
    if dialect.name != "sqlite" or python not in (datetime, date):
        return None
    return column_type.dialect_impl(dialect).bind_processor(dialect)


def python_type(column_type: sa.types.TypeEngine[Any]) -> type | None:
    """The Python type SQLAlchemy returns for a column type, if it says."""
    try:
        found: type = column_type.python_type
    except NotImplementedError:
        return None
    return found


def probe_key_type(conn: Connection, shape: SourceShape) -> type | None:
    """The Python type of the key's values, from one row when the column's type does not say.

    None means no row has a key, so there is nothing to fetch.
    """
    if shape.key_type is not None:
        return shape.key_type
    stmt = sa.select(shape.key).select_from(shape.selectable).where(shape.key.is_not(None))
    sample = conn.execute(stmt.limit(1)).scalar()
    return None if sample is None else type(sample)


def reason(exc: BaseException) -> str:
    """The database's own message, first line only (no SQL, no parameters)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__
