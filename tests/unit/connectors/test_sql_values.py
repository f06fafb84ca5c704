"""Value rules of the SQL connector: typing watermarks and keys, lookback bounds, soft deletes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from sync_service.connectors.sql_values import coerce, is_deleted, lookback_start
from sync_service.errors import ConfigError

NOON = datetime(2024, 5, 1, 12, 0, 0)


@pytest.mark.parametrize(
    ("value", "python_type", "expected"),
    [
        ("42", int, 42),
        (" 42 ", int, 42),
        (Decimal("42"), int, 42),
        (42, int, 42),
        (42, str, "42"),
        ("abc", str, "abc"),
        ("1.50", Decimal, Decimal("1.50")),
        ("2024-05-01", date, date(2024, 5, 1)),
        ("2024-05-01T12:00:00", datetime, NOON),
        ("0b7e6f3e-8c1f-4f0e-9d5e-2a2f8b8f3d11", UUID,
         UUID("0b7e6f3e-8c1f-4f0e-9d5e-2a2f8b8f3d11")),
        (None, int, None),
        ("anything", None, "anything"),
    ],
)
def test_coerce_turns_outside_values_into_the_column_type(
    value: Any, python_type: type | None, expected: Any
) -> None:
    """A key from the state store (text) is bound as the column's type, never compared as text."""
    result = coerce(value, python_type)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("value", "python_type"), [("abc", int), ("4.5", int), (True, int),
                                                    ("tomorrow", datetime), ("x", UUID)])
def test_coerce_refuses_values_that_do_not_fit(value: Any, python_type: type) -> None:
    """A value that cannot be the column's type is a ValueError, not a silent string compare."""
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the type
        coerce(value, python_type)


def test_coerce_matches_the_columns_time_zone_handling() -> None:
    """Naive for an aware column is taken as UTC; aware for a naive column becomes naive UTC."""
    paris = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert coerce(NOON, datetime, timezone=True) == NOON.replace(tzinfo=UTC)
    assert coerce(paris, datetime, timezone=False) == NOON
    assert coerce(paris, datetime, timezone=None) is paris


@pytest.mark.parametrize(
    ("cursor", "lookback", "expected"),
    [
        (NOON, None, NOON - timedelta(minutes=5)),
        (NOON, timedelta(hours=1), NOON - timedelta(hours=1)),
        (NOON, 30, NOON - timedelta(seconds=30)),
        (NOON, 0, None),
        (NOON, timedelta(0), None),
        (date(2024, 5, 1), None, date(2024, 4, 30)),
        (date(2024, 5, 1), timedelta(hours=25), date(2024, 4, 29)),
        (100, None, None),
        (100, 7, 93),
        (100, 2.5, 97),
        (Decimal("10.5"), 2, Decimal("8.5")),
        (10.5, 2, 8.5),
        (100, timedelta(0), None),
        ("2024-05-01 12:00:00.000000", None, "2024-05-01 11:55:00"),
        ("2024-05-01T12:00:00", timedelta(hours=1), "2024-05-01 11:00:00"),
        ("abc", None, None),
        ("abc", 0, None),
        (datetime.min + timedelta(minutes=1), None, datetime.min),
    ],
)
def test_lookback_start(cursor: Any, lookback: Any, expected: Any) -> None:
    """Temporal cursors go back by duration (5m default), numeric ones by units (0 default)."""
    assert lookback_start(cursor, lookback, column="c") == expected


def test_text_lookback_bound_sorts_at_or_before_every_stored_form() -> None:
    """For ISO text cursors, the bound is never after the exact one, whatever the stored form."""
    bound = lookback_start("2024-05-01T12:00:00", timedelta(minutes=5), column="c")
    for stored in ("2024-05-01 11:55:00", "2024-05-01 11:55:00.000000", "2024-05-01T11:55:00"):
        assert bound <= stored


def test_duration_lookback_on_a_numeric_cursor_is_a_config_error() -> None:
    """'5m' means nothing for a version number: the operator must give a number of units."""
    with pytest.raises(ConfigError, match="cursor column 'version' holds numbers"):
        lookback_start(100, timedelta(minutes=5), column="version")


def test_explicit_lookback_on_an_opaque_text_cursor_is_a_config_error() -> None:
    """A lookback set on a cursor that is neither a time nor a number is refused, not ignored."""
    with pytest.raises(ConfigError, match="column 'token' holds str"):
        lookback_start("abc", timedelta(minutes=5), column="token")


@pytest.mark.parametrize(
    ("value", "deleted"),
    [(None, False), (False, False), (0, False), (Decimal(0), False), ("", False), ("N", False),
     ("false", False), (True, True), (1, True), ("yes", True), (NOON, True), (date.today(), True)],
)
def test_is_deleted(value: Any, deleted: bool) -> None:
    """NULL, false and 0 mean present; a timestamp, true or 1 mean soft-deleted."""
    assert is_deleted(value) is deleted
