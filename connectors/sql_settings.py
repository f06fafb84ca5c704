"""Settings of the SQL connector: a pipeline's ``[pipelines.source]`` with ``connector = "sql"``.

Validation happens here, before any connection: exactly one of ``table`` or ``query``, a URL that
SQLAlchemy can parse, a lookback that is a duration or a number, ``fetch_size >= 1``. Whether the
named columns exist is only known with a connection; ``SqlConnector.check()`` verifies that.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sync_service.connector import ConnectorSettings
from sync_service.units import duration_parts, parse_duration

Lookback = timedelta | int | float

_LOOKBACK_HELP = (
    "lookback must be a duration such as '30s', '5m', '1h' or '1d', a plain number (seconds for "
    "a temporal cursor, cursor units for a numeric one), or 0 to disable"
)


def parse_lookback(value: Any) -> Lookback | None:
    """Turn a configured lookback into a ``timedelta`` (a duration with a unit) or a number.

    A plain number stays a number: it means seconds for a temporal cursor and cursor units for a
    numeric cursor, which only the connector knows once it has seen the column. None is kept (the
    connector's default applies).
    """
    if value is None or isinstance(value, timedelta):
        if value is not None and value < timedelta(0):
            raise ValueError(f"{_LOOKBACK_HELP}; got a negative duration")
        return value
    if isinstance(value, bool):
        raise ValueError(f"{_LOOKBACK_HELP}; got {value!r}")
    if isinstance(value, int | float):
        if not value >= 0 or value == float("inf"):  # also NaN, which TOML can write
            raise ValueError(f"{_LOOKBACK_HELP}; got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{_LOOKBACK_HELP}; got {value!r}")
    parts = duration_parts(value)
    if parts is None:
        raise ValueError(f"{_LOOKBACK_HELP}; got {value!r}")
    amount, unit = parts
    if unit is None:
        return amount
    return timedelta(seconds=parse_duration(value))


class SqlSourceSettings(ConnectorSettings):
    """Where and how the SQL connector reads its rows."""

    connector: Literal["sql"] = "sql"
    url: str = Field(
        repr=False,
        description="SQLAlchemy URL of the source database, e.g. postgresql+psycopg://crm@db/crm; "
        "put the password in an environment variable (${VAR}); it is never logged",
    )
    table: str | None = Field(
        None, description="table or view to read (set exactly one of `table` or `query`)"
    )
    db_schema: str | None = Field(
        None, alias="schema", description="schema of `table` (default: the connection's own)"
    )
    query: str | None = Field(
        None,
        description="a SELECT whose result is read as if it were a table; it is wrapped as a "
        "subquery, so it may join and filter but should not ORDER BY or LIMIT",
    )
    key: str = Field(
        description="column identifying a row; unique under the database's collation (on MariaDB "
        "with a case-insensitive collation 'ABC' and 'abc' are the same key)"
    )
    cursor: str = Field(
        description="column that grows when a row changes (a timestamp or a number); rows are "
        "read in (cursor, key) order"
    )
    columns: tuple[str, ...] | None = Field(
        None,
        description="columns to read (default: all); key, cursor and deleted_column are added",
    )
    deleted_column: str | None = Field(
        None,
        description="a soft-delete column: a row whose value is non-NULL and not false/0 "
        "(e.g. deleted_at set, or is_deleted true) is read as deleted",
    )
    lookback: Lookback | None = Field(
        None,
        description="how far behind the watermark each incremental read starts, to catch rows "
        "committed late: '30s', '5m', '1h', '1d' or plain seconds for a temporal cursor, a number "
        "for a numeric cursor, 0 to disable; default: 5m for temporal cursors, 0 otherwise",
    )
    fetch_size: int = Field(
        5000, ge=1, strict=True,
        description="rows per page query; memory is bounded by this many rows"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:  # the parser's message may quote a secret
            raise ValueError(
                "is not a SQLAlchemy URL (expected dialect+driver://user@host/database)"
            ) from exc
        return value

    @field_validator("table", "db_schema", "key", "cursor", "deleted_column")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # A trailing semicolon would end the statement inside the subquery it is wrapped in.
        value = value.strip().rstrip(";").strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("must name at least one column (or be left out to read all)")
        return value

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any) -> Lookback | None:
        return parse_lookback(value)

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceSettings:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of `table` or `query`")
        if self.query is not None and self.db_schema is not None:
            raise ValueError("`schema` applies to `table` only; qualify names inside `query`")
        return self


def time_lookback(value: Any) -> timedelta:
    """A lookback for a time cursor (the CRM connectors): a duration, or seconds; 0 if unset."""
    parsed = parse_lookback(value)
    if parsed is None:
        return timedelta(0)
    return parsed if isinstance(parsed, timedelta) else timedelta(seconds=float(parsed))
