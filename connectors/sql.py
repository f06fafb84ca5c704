"""The SQL source connector (``connector = "sql"``): a table, view or query read through SQLAlchemy.

Contract (see ``SqlSourceSettings`` for the keys):

- **Order.** Records come in (cursor, key) order, read by keyset pagination: each page is its own
  short query ``... WHERE cursor > :c OR (cursor = :c AND key > :k) ORDER BY cursor, key LIMIT
  :fetch_size`` on a connection that returns to the pool before the page is yielded. Memory is
  bounded by ``fetch_size`` rows and no transaction stays open while the job works. Thousands of
  rows sharing one cursor value are each read once, whatever the page boundaries.
- **Watermark.** ``Position(cursor, key)`` holding the values as read. ``read(None)`` reads every
  row; ``read(p)`` reads rows strictly after ``p``, or, with a lookback L > 0, every row with
  ``cursor >= p.cursor - L`` (default L: 5 minutes for a temporal cursor, none for a numeric one),
  so a row that committed late with a cursor inside the window is still read. Re-read rows are
  skipped downstream by hash.
- **Comparing with what the column holds.** A watermark is converted to the column's type before
  it is bound (a key ``"42"`` from the state store becomes ``42`` for an integer key). For a
  datetime column, a naive watermark is taken as UTC for an aware column and an aware one is
  converted to naive UTC for a naive column. SQLite stores datetimes as text and compares them as
  text: in ``table`` mode the stored text must be what SQLAlchemy writes, which is verified row by
  row (``SourceError`` otherwise); in ``query`` mode the cursor is that text itself.
- **Keys** must be unique under the database's collation: MariaDB's usual collations ignore case
  and trailing spaces, so 'abc' and 'ABC ' are one key there (and ``fetch`` finds either).
- **NULL cursor.** Such rows cannot be found by cursor, so only a full read (``since`` None)
  yields them: first, in key order, with ``cursor`` None, and their count is logged as
  ``sql.null_cursor_rows``. A watermark taken inside that phase (cursor None) resumes it.
- **NULL key.** Such rows cannot be tracked: never yielded, never an error; the number in the
  read's range is logged as ``sql.null_key_rows``.
- **Deletes.** With ``deleted_column``, a row whose value is non-NULL and not false/0 is yielded
  with ``deleted=True``.
- **Errors.** SQLAlchemy errors become ``SourceError`` at this boundary, naming the URL without
  its password (nor secret query parameters); a missing table or column (also one that
  disappeared since the last run) is a ``ConfigError`` naming it and listing what exists.
- **Undecodable values.** A page holding a value its column's type cannot decode is read again
  value by value; that row is yielded with ``problem`` set (the diff rejects it) and the others
  read as usual.
- **Guards** (``sql_guards``): connections are read-only; a missing SQLite file, a cursor whose
  values do not order as one type, and a lookback that does not fit the cursor are
  ``ConfigError``s found by ``check()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL, Connection, Engine, make_url

from sync_service.errors import ConfigError, SourceError
from sync_service.logging import redact
from sync_service.models import Position, SourceRecord

from .sql_cursor import numeric_cursor_without_lookback, pin_session_time_zone
from .sql_guards import (
    check_cursor_order,
    check_lookback,
    make_read_only,
    mixed_cursor,
    order_class,
    sqlite_file_exists,
    tolerate_undecodable,
)
from .sql_settings import SqlSourceSettings
from .sql_source import (
    SourceShape,
    describe,
    is_write_refused,
    probe_key_type,
    reason,
    write_refused,
)
from .sql_values import coerce, lookback_start

__all__ = ["SqlConnector", "SqlSourceSettings"]

log = structlog.get_logger(__name__)

_CONNECT_TIMEOUT_S = 10
_FETCH_CHUNK = 500  # keys per IN list in fetch(); well under every engine's parameter limit
_Condition = sa.ColumnElement[bool]
# What PostgreSQL and MariaDB/MySQL say when they refuse a login.
_REFUSED = re.compile(r"password authentication failed|role \"[^\"]*\" does not exist|"
                      r"access denied for user", re.IGNORECASE)


class SqlConnector:
    """Reads ``SourceRecord``s from a SQL table or query; see the module docstring."""

    settings_model: ClassVar[type[SqlSourceSettings]] = SqlSourceSettings

    def __init__(self, settings: SqlSourceSettings) -> None:
        self.settings = settings
        self._url = make_url(settings.url)
        self._safe_url = redact(self._url.render_as_string(hide_password=True))
        table = ".".join(n for n in (settings.db_schema, settings.table) if n)
        self._label = f"table {table}" if table else "`query`"
        sqlite_file_exists(self._url, "source")
        self._engine = _create_engine(self._url, self._safe_url)
        make_read_only(self._engine)
        tolerate_undecodable(self._engine)

    @property
    def engine(self) -> Engine:
        """The connector's engine (for instrumentation; the connector owns and disposes it)."""
        return self._engine

    # the protocol ---------------------------------------------------------------------------
    def check(self) -> None:
        """Connect, find the table or run the query (read-only), check every configured column,
        that the cursor orders as one type and that the lookback fits it.

        Credentials the database refuses are a ``ConfigError`` naming ``source.url``.
        """
        try:
            with self._connection("checking") as conn:
                shape = describe(conn, self.settings)
                conn.execute(shape.select().limit(1)).close()  # run for real: a write fails here
                check_cursor_order(conn, shape)
                check_lookback(conn, shape, self.settings)
        except SourceError as exc:
            if _REFUSED.search(str(exc)):
                raise ConfigError(f"source.url: the database refused the credentials: {exc}"
                                  ) from exc
            raise
        log.info("sql.check_ok", source=shape.label, url=self._safe_url, columns=len(shape.names))
        with self._connection("checking") as conn:
            numeric_cursor_without_lookback(conn, shape, self.settings)

    def columns(self) -> tuple[str, ...]:
        """The columns each record's ``values`` holds (what a mapping may name)."""
        return self._describe("checking").names

    def read(self, since: Position | None) -> Iterator[SourceRecord]:
        """Stream records after ``since`` (all of them when None) in (cursor, key) order."""
        shape = self._describe("reading")
        since = self._typed(shape, since)
        log.info("sql.read_started", source=shape.label,
                 since_cursor=None if since is None else str(since.cursor))
        count = 0
        if since is None or since.cursor is None:
            for record in self._null_cursor_records(shape, since):
                count += 1
                yield record
            if count:
                log.warning("sql.null_cursor_rows", source=shape.label, column=shape.cursor_name,
                            count=count)
            first: _Condition = shape.cursor.is_not(None)
        else:
            first = self._first_condition(shape, since)
        order = (shape.cursor, shape.key)
        classes: dict[type, str] = {}  # the ordering class of each type of cursor value read
        for record in self._pages(shape, first, order, lambda r: _after(shape, r.cursor, r.key)):
            count += 1
            if type(record.cursor) not in classes:
                _same_order_class(shape, record.cursor, classes)
            yield record
        self._report_null_keys(shape, since)
        log.info("sql.read_finished", source=shape.label, rows=count)

    def fetch(self, keys: Sequence[str]) -> Iterator[SourceRecord]:
        """The current rows for these keys (converted to the key column's type), in chunks."""
        shape = self._describe("fetching")
        typed = self._typed_keys(shape, keys)
        for start in range(0, len(typed), _FETCH_CHUNK):
            chunk = typed[start:start + _FETCH_CHUNK]
            stmt = shape.select().where(shape.key.in_(chunk)).order_by(shape.key)
            yield from self._run_page(stmt, shape, "fetching")

    def keys(self) -> Iterator[str]:
        """Every key the source holds now, as text: the cheap key listing of a key scan."""
        shape = self._describe("listing the keys of")
        stmt = sa.select(shape.key).select_from(shape.selectable).where(shape.key.is_not(None))
        with self._connection("listing the keys of") as conn:
            result = conn.execution_options(stream_results=True, yield_per=10_000).execute(stmt)
            for key in result.scalars():
                yield str(key)

    def close(self) -> None:
        """Dispose of the engine and its pooled connections."""
        self._engine.dispose()

    # reading ---------------------------------------------------------------------------------
    def _null_cursor_records(
        self, shape: SourceShape, since: Position | None
    ) -> Iterator[SourceRecord]:
        null = shape.cursor.is_(None)
        first = null if since is None else sa.and_(null, shape.key > since.key)

        def after(record: SourceRecord) -> _Condition:
            return sa.and_(null, shape.key > record.key)

        return self._pages(shape, first, (shape.key,), after)

    def _pages(
        self,
        shape: SourceShape,
        first: _Condition,
        order: tuple[sa.ColumnElement[Any], ...],
        after: Callable[[SourceRecord], _Condition],
    ) -> Iterator[SourceRecord]:
        """Keyset pagination: one LIMIT-ed query per page, each on a fresh pooled connection."""
        condition = first
        while True:
            stmt = (shape.select().where(shape.key.is_not(None), condition)
                    .order_by(*order).limit(self.settings.fetch_size))
            page = self._run_page(stmt, shape, "reading")
            yield from page
            if len(page) < self.settings.fetch_size:
                return
            condition = after(page[-1])

    def _run_page(
        self, stmt: sa.Select[Any], shape: SourceShape, action: str
    ) -> list[SourceRecord]:
        with self._connection(action) as conn:
            try:
                rows = conn.execute(stmt).all()
            except (ValueError, TypeError, ArithmeticError):
                # A stored value its column's type cannot decode (SQLite keeps any text in a DATE
                # column): read the page again value by value, so only that row is rejected.
                return self._undecodable(shape, shape.decode_each(conn, stmt))
            except sa.exc.OperationalError as exc:
                if not _bad_utf8(conn, exc):
                    raise
                return self._undecodable(shape, _lenient_text_page(conn, stmt, shape))
        return shape.records(rows)

    def _undecodable(self, shape: SourceShape, records: list[SourceRecord]
                     ) -> list[SourceRecord]:
        log.warning("sql.undecodable_values", source=shape.label,
                    rows=sum(r.problem is not None for r in records))
        return records

    def _first_condition(self, shape: SourceShape, since: Position) -> _Condition:
        start = lookback_start(since.cursor, self.settings.lookback, column=shape.cursor_name)
        if start is None:
            return _after(shape, since.cursor, since.key)
        within: _Condition = shape.cursor >= start
        return within

    def _range(self, shape: SourceShape, since: Position | None) -> _Condition:
        """Every row a read from ``since`` covers (NULL-cursor rows included on a full read)."""
        if since is None:
            return sa.true()
        if since.cursor is None:
            return sa.or_(sa.and_(shape.cursor.is_(None), shape.key > since.key),
                          shape.cursor.is_not(None))
        return self._first_condition(shape, since)

    def _report_null_keys(self, shape: SourceShape, since: Position | None) -> None:
        if not shape.key_nullable:
            return
        stmt = (sa.select(sa.func.count()).select_from(shape.selectable)
                .where(shape.key.is_(None), self._range(shape, since)))
        with self._connection("counting") as conn:
            count = int(conn.execute(stmt).scalar_one())
        if count:
            log.warning("sql.null_key_rows", source=shape.label, column=shape.key_name,
                        count=count)

    # typing what comes from outside -----------------------------------------------------------
    def _typed(self, shape: SourceShape, since: Position | None) -> Position | None:
        if since is None:
            return None
        try:
            cursor = coerce(since.cursor, shape.cursor_type, timezone=shape.cursor_timezone)
            key = coerce(since.key, shape.key_type)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise SourceError(
                f"the watermark ({since.cursor!r}, {since.key!r}) does not fit the cursor "
                f"{shape.cursor_name!r} and key {shape.key_name!r} of {shape.label} ({exc}); "
                "were they changed? a full re-read (backfill) starts over"
            ) from exc
        return Position(cursor, key)

    def _typed_keys(self, shape: SourceShape, keys: Sequence[str]) -> list[Any]:
        with self._connection("fetching") as conn:
            key_type = probe_key_type(conn, shape)
        if key_type is None:  # the key's type is unknown only when no row has a key
            return []
        typed: dict[Any, None] = {}
        unusable = 0
        for key in keys:
            try:
                typed[coerce(key, key_type)] = None
            except (ValueError, TypeError, ArithmeticError):
                unusable += 1
        if unusable:
            log.warning("sql.fetch_unusable_keys", source=shape.label, column=shape.key_name,
                        count=unusable)
        return list(typed)

    # connections ------------------------------------------------------------------------------
    def _describe(self, action: str) -> SourceShape:
        with self._connection(action) as conn:
            return describe(conn, self.settings)

    @contextmanager
    def _connection(self, action: str) -> Iterator[Connection]:
        """A pooled connection; SQLAlchemy errors become SourceError naming the safe URL."""
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(
                f"cannot connect to {self._safe_url}: {self._redact(reason(exc))}"
            ) from exc
        with conn:
            try:
                yield conn
            except sa.exc.SQLAlchemyError as exc:
                if is_write_refused(exc):
                    raise write_refused(action, self._label, exc) from exc
                raise SourceError(
                    f"{action} {self._label} failed on {self._safe_url}: "
                    f"{self._redact(reason(exc))}"
                ) from exc

    def _redact(self, text: str) -> str:
        text = text.replace(self._url.render_as_string(hide_password=False), self._safe_url)
        return redact(text)


def _bad_utf8(conn: Connection, exc: sa.exc.OperationalError) -> bool:
    """SQLite text that is not UTF-8 (sqlite3 refuses to decode it, for the whole page)."""
    return conn.dialect.name == "sqlite" and "could not decode to utf-8" in str(exc).lower()


def _lenient_text_page(conn: Connection, stmt: sa.Select[Any], shape: SourceShape
                       ) -> list[SourceRecord]:
    """The page read again with undecodable bytes kept as surrogates; a row holding such text
    gets a ``problem`` naming the column (its value is blanked, never shown)."""
    raw = conn.connection.dbapi_connection
    previous = raw.text_factory  # type: ignore[union-attr]
    raw.text_factory = lambda data: data.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]
    try:
        try:
            records = [shape.record(row) for row in conn.execute(stmt).all()]
        except (ValueError, TypeError, ArithmeticError):
            records = shape.decode_each(conn, stmt)
    finally:
        raw.text_factory = previous  # type: ignore[union-attr]
    return [_without_bad_text(shape, record) for record in records]


def _without_bad_text(shape: SourceShape, record: SourceRecord) -> SourceRecord:
    bad = sorted(name for name, value in record.values.items()
                 if isinstance(value, str) and not _is_utf8(value))
    if not bad:
        return record
    if shape.key_name in bad or shape.cursor_name in bad:
        raise SourceError(f"the key or cursor of a row of {shape.label} holds text that is not "
                          "valid UTF-8; the row cannot be tracked, fix the value in the source")
    problem = "; ".join(f"column {name} holds text that is not valid UTF-8 (key "
                        f"{record.key!r})" for name in bad)
    if record.problem:
        problem = f"{record.problem}; {problem}"
    values = {n: None if n in bad else v for n, v in record.values.items()}
    return SourceRecord(record.key, record.cursor, values, record.deleted, problem)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same_order_class(shape: SourceShape, cursor: Any, seen: dict[type, str]) -> None:
    """Cursor values of two ordering classes in one read: a ConfigError (see sql_guards).

    A value's class depends only on its type, so ``seen`` keeps one entry per type read."""
    if cursor is None:
        return
    seen[type(cursor)] = order_class(cursor)
    kinds = set(seen.values())
    if len(kinds) > 1:
        raise mixed_cursor(shape, dict.fromkeys(kinds, 0))


def _after(shape: SourceShape, cursor: Any, key: Any) -> _Condition:
    """Rows strictly after (cursor, key) in (cursor, key) order."""
    bound = _in_column_precision(shape, cursor)
    condition: _Condition = sa.or_(
        shape.cursor > bound, sa.and_(shape.cursor == bound, shape.key > key)
    )
    return condition


def _in_column_precision(shape: SourceShape, cursor: Any) -> Any:
    """A float cursor, cast to its column's type before comparing.

    A single-precision value (PostgreSQL ``real``, MariaDB ``FLOAT``) comes back as its shortest
    decimal (0.1), which as a double is below the stored value: compared as a double, every row
    holding it would be "after" it, and a full page of equal values would be read forever.
    """
    if shape.cursor_type is float and not isinstance(shape.cursor.type, sa.types.NullType):
        return sa.cast(sa.literal(cursor, sa.Float()), shape.cursor.type)
    return cursor


def _create_engine(url: URL, safe_url: str) -> Engine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    backend = url.get_backend_name()
    if backend != "sqlite":
        # Pages are read one after another: a small pool suffices; recycle before server timeouts.
        kwargs.update(pool_size=2, max_overflow=2, pool_recycle=1800, pool_timeout=30)
    if backend in ("postgresql", "mysql", "mariadb") and "connect_timeout" not in url.query:
        kwargs["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_S}
    try:
        engine = sa.create_engine(url, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot use source URL {safe_url}: {exc}") from exc
    pin_session_time_zone(engine)
    return engine
