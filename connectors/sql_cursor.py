"""Cursor facts the SQL connector checks or pins, kept apart from reading itself.

- ``pin_session_time_zone``: MySQL/MariaDB convert ``TIMESTAMP`` values to and from the
  session's time zone, which defaults to the server's. A watermark read under one time zone and
  bound under another (the server's setting changed, or a zone with summer time whose repeated
  hour makes local times ambiguous) would skip or repeat rows. Every connection of the connector
  runs with ``time_zone = '+00:00'``, so TIMESTAMP cursors are read, stored and bound as UTC.
- ``numeric_cursor_without_lookback``: a numeric cursor (an id, a version counter) gets no
  lookback by default, so a row committed late with a lower value than the watermark is never
  read; ``check`` warns and says how to set one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from .sql_settings import SqlSourceSettings
from .sql_source import SourceShape

log = structlog.get_logger(__name__)

UTC_SESSION = "SET time_zone = '+00:00'"


def pin_session_time_zone(engine: Engine) -> None:
    """Run every MySQL/MariaDB connection of ``engine`` in UTC (see the module docstring)."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(UTC_SESSION)
        finally:
            cursor.close()

    sa.event.listen(engine, "connect", on_connect)


def numeric_cursor_without_lookback(conn: Connection, shape: SourceShape,
                                    settings: SqlSourceSettings) -> bool:
    """Warn (``sql.numeric_cursor_without_lookback``) when it applies; True if it did."""
    if settings.lookback is not None and not _zero(settings.lookback):
        return False
    kind = shape.cursor_type
    if kind is None:
        stmt = (sa.select(shape.cursor).select_from(shape.selectable)
                .where(shape.cursor.is_not(None)).limit(1))
        sample = conn.execute(stmt).scalar()
        kind = None if sample is None else type(sample)
    if kind is None or kind is bool or not issubclass(kind, int | float | Decimal):
        return False
    log.warning(
        "sql.numeric_cursor_without_lookback", source=shape.label, column=shape.cursor_name,
        hint=(f"cursor {shape.cursor_name!r} is numeric and has no lookback: a row committed "
              "late with a value below the watermark is never read. Set lookback to how far "
              "back each run re-reads, in the cursor's units (for example lookback = 1000 in "
              "[pipelines.source]); re-read rows that did not change cost almost nothing"))
    return True


def _zero(lookback: Any) -> bool:
    try:
        return not lookback or float(lookback) == 0
    except (TypeError, ValueError):
        return bool(getattr(lookback, "total_seconds", lambda: 1)() == 0)
