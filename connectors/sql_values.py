"""Value rules of the SQL connector: typing keys and watermarks, lookback bounds, soft deletes.

Pure functions, no I/O. The connector compares watermarks with what the column holds, so a key
that arrives as text (from the state store) is turned back into the column's type before it is
bound: an integer key is never compared as a string.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sync_service.errors import ConfigError

from .sql_settings import Lookback

DEFAULT_TEMPORAL_LOOKBACK = timedelta(minutes=5)
_FALSE_WORDS = frozenset({"", "0", "false", "f", "no", "n"})


def coerce(value: Any, python_type: type | None, *, timezone: bool | None = None) -> Any:
    """Convert ``value`` to ``python_type`` (the column's), or raise ValueError.

    ``timezone`` says whether a datetime column holds aware values (True), naive ones (False) or
    is unknown (None). A naive column is taken to hold UTC: an aware value is converted to UTC and
    made naive; a naive value for an aware column is taken as UTC.
    """
    if value is None or python_type is None:
        return value
    if python_type is datetime:
        return _as_datetime(value, timezone)
    if python_type is date and isinstance(value, datetime):
        return value.date()
    if isinstance(value, python_type) and not isinstance(value, bool):
        return value
    convert = _CONVERTERS.get(python_type)
    return value if convert is None else convert(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, str):
        return int(value.strip())
    number = Decimal(str(value))
    if number != number.to_integral_value():
        raise ValueError(f"{value!r} is not an integer")
    return int(number)


def _as_datetime(value: Any, timezone: bool | None) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if not isinstance(value, datetime):
        raise ValueError(f"{value!r} is not a datetime")
    if timezone is True and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if timezone is False and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def lookback_start(cursor: Any, lookback: Lookback | None, *, column: str) -> Any:
    """The lower bound (inclusive) at which a read after ``cursor`` starts, or None for no lookback.

    ``lookback`` None means the default: 5 minutes for a temporal cursor, none otherwise. Dates
    go back whole days (rounded up). Text cursors that are ISO-8601 timestamps (SQLite stores
    datetimes as text) get a text bound that sorts at or before the exact one, which only re-reads
    a little more. A lookback that cannot apply to the cursor's values is a ConfigError.
    """
    if _is_zero(lookback):
        return None
    if isinstance(cursor, datetime):
        return _before_datetime(cursor, _duration(lookback))
    if isinstance(cursor, date):
        return _before_date(cursor, _duration(lookback))
    if isinstance(cursor, int | float | Decimal) and not isinstance(cursor, bool):
        return _before_number(cursor, lookback, column)
    parsed = _parse_iso(cursor) if isinstance(cursor, str) else None
    if parsed is not None:
        start = _before_datetime(parsed, _duration(lookback))
        return start.isoformat(sep=" ")
    if lookback is None:
        return None
    raise ConfigError(
        f"lookback needs a temporal or numeric cursor, but column {column!r} holds "
        f"{type(cursor).__name__} values such as {str(cursor)[:40]!r}; set lookback = 0"
    )


def _is_zero(lookback: Lookback | None) -> bool:
    if isinstance(lookback, timedelta):
        return lookback == timedelta(0)
    return lookback is not None and lookback == 0


def _duration(lookback: Lookback | None) -> timedelta:
    if lookback is None:
        return DEFAULT_TEMPORAL_LOOKBACK
    if isinstance(lookback, timedelta):
        return lookback
    return timedelta(seconds=lookback)


def _before_datetime(cursor: datetime, delta: timedelta) -> datetime:
    try:
        return cursor - delta
    except OverflowError:
        return datetime.min.replace(tzinfo=cursor.tzinfo)


def _before_date(cursor: date, delta: timedelta) -> date:
    days = math.ceil(delta / timedelta(days=1))
    try:
        return cursor - timedelta(days=days)
    except OverflowError:
        return date.min


def _before_number(cursor: int | float | Decimal, lookback: Lookback | None, column: str) -> Any:
    if lookback is None:
        return None
    if isinstance(lookback, timedelta):
        raise ConfigError(
            f"lookback is a duration ({lookback}) but cursor column {column!r} holds numbers; "
            "give lookback as a number of cursor units (or 0)"
        )
    if isinstance(cursor, int):
        return cursor - math.ceil(lookback)
    if isinstance(cursor, Decimal):
        return cursor - Decimal(str(lookback))
    return cursor - float(lookback)


def _parse_iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    int: _as_int,
    Decimal: lambda value: Decimal(str(value)),
    float: float,
    str: str,
    date: lambda value: date.fromisoformat(str(value)),
    UUID: lambda value: UUID(str(value)),
}


def is_deleted(value: Any) -> bool:
    """Whether a soft-delete column's value marks the row deleted.

    NULL, false, 0 and the words '', '0', 'false', 'f', 'no', 'n' mean "not deleted"; anything
    else (a deletion timestamp, true, 1, 'yes') means deleted.
    """
    if value is None:
        return False
    if isinstance(value, bool | int | float | Decimal):
        return bool(value)
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return True
