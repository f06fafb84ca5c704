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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from sync_service.errors import ConfigError, SourceError
from sync_service.models import SourceRecord

from .sql_settings import SqlSourceSettings
from .sql_values import Undecodable, is_deleted

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
    # PostgreSQL: values the driver cannot decode arrive as ``Undecodable`` (see sql_guards).
    tolerant: bool = False

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

    def record(self, row: Sequence[Any], problem: str | None = None) -> SourceRecord:
        """The row as a record; ``values`` holds every selected column by name."""
        values = dict(zip(self.names, row, strict=False))
        cursor = values[self.cursor_name]
        if self.cursor_as_text is not None and cursor is not None:
            self._check_text(self.cursor_as_text, cursor, row[len(self.names)])
        if self.tolerant and problem is None:
            failed = {n: v for n, v in values.items() if isinstance(v, Undecodable)}
            if failed:
                return self._undecodable(values, failed)
        deleted = self.deleted_name is not None and is_deleted(values[self.deleted_name])
        return SourceRecord(values[self.key_name], cursor, values, deleted, problem)

    def records(self, rows: Sequence[Sequence[Any]]) -> list[SourceRecord]:
        """``record`` of each row of a page, with what does not change per row worked out once
        (issue 11: this runs for every row the connector reads)."""
        names, width = self.names, len(self.names)
        key_at, cursor_at = names.index(self.key_name), names.index(self.cursor_name)
        deleted_at = None if self.deleted_name is None else names.index(self.deleted_name)
        writer, tolerant = self.cursor_as_text, self.tolerant
        records: list[SourceRecord] = []
        append = records.append
        for row in rows:
            if tolerant and any(isinstance(value, Undecodable) for value in row):
                append(self.record(row))
                continue
            cursor = row[cursor_at]
            if writer is not None and cursor is not None and writer(cursor) != row[width]:
                self._check_text(writer, cursor, row[width])
            deleted = deleted_at is not None and is_deleted(row[deleted_at])
            append(SourceRecord(row[key_at], cursor, dict(zip(names, row, strict=False)),
                                deleted))
        return records

    def _undecodable(self, values: dict[str, Any], failed: dict[str, Undecodable]
                     ) -> SourceRecord:
        """A PostgreSQL row holding 'infinity' or a BC date: rejected naming key and column."""
        key = values[self.key_name]
        for column, role in ((self.key_name, "tracked"), (self.cursor_name, "ordered")):
            if column in failed:
                raise SourceError(
                    f"column {column!r} of {self.label} holds a {failed[column].sql_type} value "
                    f"Python cannot represent (infinity, or before year 1) (key {_short(key)}); "
                    f"the row cannot be {role}, fix the value in the source"
                )
        problem = "; ".join(
            f"column {name} holds a {value.sql_type} value Python cannot represent (infinity, "
            f"or before year 1) (key {_short(key)})" for name, value in sorted(failed.items()))
        clean = {n: None if n in failed else v for n, v in values.items()}
        deleted = self.deleted_name is not None and is_deleted(clean[self.deleted_name])
        return SourceRecord(key, values[self.cursor_name], clean, deleted, problem)

    def decode_each(self, conn: Connection, stmt: sa.Select[Any]) -> list[SourceRecord]:
        """Run ``stmt`` again with every column fetched undecoded, then decode value by value.

        Used when a page holds a value the column's type cannot decode (SQLite keeps any text in
        a DATE column): that row becomes a record with a ``problem`` naming the key, the column
        and the value's kind (never the value), and every other row reads as usual. A key or
        cursor that cannot be decoded cannot be tracked or ordered: that is a ``SourceError``.
        """
        dialect = conn.dialect
        selected = list(stmt.selected_columns)
        raw = stmt.with_only_columns(
            *(sa.type_coerce(column, sa.types.NullType()).label(f"c{index}")
              for index, column in enumerate(selected)))
        decoders = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                    for column in selected]
        kinds = {name: str(selected[i].type) for i, name in enumerate(self.names)}
        records = []
        for row in conn.execute(raw).all():
            decoded = list(row)
            failed: dict[str, Any] = {}
            for index, decoder in enumerate(decoders):
                if decoder is None or row[index] is None:
                    continue
                try:
                    decoded[index] = decoder(row[index])
                except (ValueError, TypeError, ArithmeticError):
                    decoded[index] = None
                    failed[self.names[index] if index < len(self.names) else "?"] = row[index]
            records.append(self._partial(decoded, failed, kinds))
        return records

    def _partial(self, decoded: list[Any], failed: dict[str, Any], kinds: dict[str, str]
                 ) -> SourceRecord:
        key = decoded[self.names.index(self.key_name)]
        for column, role in ((self.key_name, "tracked"), (self.cursor_name, "ordered")):
            if column in failed:
                where = "" if role == "tracked" else f" (key {_short(key)})"
                raise SourceError(
                    f"column {column!r} of {self.label} holds {_kind(failed[column])} that its "
                    f"{kinds[column]} type cannot decode{where}; the row cannot be {role}, fix "
                    "the value in the source"
                )
        if not failed:
            return self.record(decoded)
        problem = "; ".join(
            f"column {name} holds {_kind(value)} that its {kinds.get(name, 'declared')} type "
            f"cannot decode (key {_short(key)})" for name, value in sorted(failed.items()))
        return self.record(decoded, problem=problem)

    def _check_text(self, writer: Callable[[Any], Any], cursor: Any, stored: Any) -> None:
        written = writer(cursor)
        if written != stored:
            raise SourceError(
                f"cursor column {self.cursor_name!r} of {self.label} holds the text {stored!r}, "
                f"which SQLite compares as text but SQLAlchemy writes as {written!r}; paging by "
                "this column would skip or repeat rows. Store datetimes as "
                "'YYYY-MM-DD HH:MM:SS.ffffff', or read through `query` so the cursor is the text"
            )


def _kind(value: Any) -> str:
    """The kind of a stored value, in words, for messages that must not show the value."""
    words = {str: "a text value", bytes: "a binary value", int: "an integer value",
             float: "a real value"}
    return words.get(type(value), f"a {type(value).__name__} value")


def _short(key: Any) -> str:
    """A key for a message: shown when short printable text, else by its kind."""
    text = str(key)
    return repr(text) if len(text) <= 64 and text.isprintable() else _kind(key)


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
        tolerant=conn.dialect.name == "postgresql",
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
        if is_write_refused(exc):
            raise write_refused("checking", "`query`", exc) from exc
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
        tolerant=conn.dialect.name == "postgresql",
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
    impl = column_type.dialect_impl(dialect)
    processor = impl.bind_processor(dialect)
    if (processor is not None and python is datetime
            and getattr(impl, "_storage_format", None) == _SQLITE_DATETIME_FORMAT):
        return _datetime_text(processor)
    return processor


# How SQLAlchemy's SQLite DATETIME writes a value by default: what a naive datetime's
# ``isoformat(" ", "microseconds")`` gives, at a tenth of the cost per row (issue 11).
_SQLITE_DATETIME_FORMAT = ("%(year)04d-%(month)02d-%(day)02d "
                           "%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d")


def _datetime_text(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``processor``, with naive datetimes (nearly every cursor value) written directly."""

    def write(value: Any) -> Any:
        if type(value) is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return processor(value)

    return write


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


_READ_ONLY_WORDS = ("read-only", "readonly", "read only")


def is_write_refused(exc: BaseException) -> bool:
    """Whether a database error says a statement tried to write in a read-only session."""
    text = reason(exc).lower()
    return any(word in text for word in _READ_ONLY_WORDS)


def write_refused(action: str, label: str, exc: BaseException) -> ConfigError:
    """The error for a statement that tried to write to the (read-only) source."""
    return ConfigError(
        f"{action} {label}: the source is read-only for mailtrap-sync and the statement tried "
        f"to write ({reason(exc)}); `query` must only read"
    )


def reason(exc: BaseException) -> str:
    """The database's own message, first line only (no SQL, no parameters)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__
