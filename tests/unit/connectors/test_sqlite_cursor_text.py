"""The SQLite cursor-text check's fast writer gives the text SQLAlchemy's DATETIME writes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from connectors.sql_source import _sqlite_text_writer

VALUES = [
    datetime(2025, 1, 2, 3, 4, 5), datetime(2025, 1, 2, 3, 4, 5, 6), datetime(1, 1, 1),
    datetime(999, 12, 31, 23, 59, 59, 999_999), datetime(9999, 12, 31, 23, 59, 59, 999_999),
    datetime(2025, 6, 1, 12, tzinfo=UTC),
    datetime(2025, 6, 1, 12, tzinfo=timezone(timedelta(hours=5))),
    date(2025, 1, 2),
]


def test_fast_writer_matches_sqlalchemy_datetime_text() -> None:
    """For naive, aware and edge-of-range datetimes (and a date) the text equals SQLAlchemy's."""
    dialect = sqlite.dialect()
    writer = _sqlite_text_writer(dialect, sa.DateTime(), datetime)
    reference = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert writer is not None
    assert reference is not None
    assert [writer(v) for v in VALUES] == [reference(v) for v in VALUES]


def test_custom_storage_format_keeps_sqlalchemy_writer() -> None:
    """A DATETIME with its own storage format is checked with SQLAlchemy's own writer."""
    dialect = sqlite.dialect()
    column = sqlite.DATETIME(
        storage_format="%(year)04d/%(month)02d/%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
        regexp=r"(\d+)/(\d+)/(\d+) (\d+):(\d+):(\d+)")
    writer = _sqlite_text_writer(dialect, column, datetime)
    assert writer is not None
    assert writer(datetime(2025, 1, 2, 3, 4, 5)) == "2025/01/02 03:04:05"
