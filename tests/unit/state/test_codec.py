"""The tagged JSON codec for watermark values (pure, no database)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync_service.state import codec

VALUES: list[Any] = [
    None, True, False, 0, -7, 2**70, 1.5, float("inf"), 0.1 + 0.2, Decimal("1.10"),
    Decimal("-0E-8"), "", "ünïcode ✓", datetime(2024, 5, 1, 12, 30, 5, 123456),
    datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    date(2024, 2, 29), time(23, 59, 59, 1), UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xff", (1, "a"), [date(2024, 1, 1), None],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_come_back_with_their_type_and_value(value: Any) -> None:
    """encode/decode returns an equal value of exactly the same type (and the same offset)."""
    back = codec.decode(codec.encode(value))
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, datetime):
        assert back.utcoffset() == value.utcoffset()
    if isinstance(value, Decimal):
        assert str(back) == str(value)


def test_nan_survives() -> None:
    """A NaN float decodes to a NaN float (it equals nothing, so it is checked apart)."""
    back = codec.decode(codec.encode(float("nan")))
    assert isinstance(back, float)
    assert math.isnan(back)


def test_unsupported_type_is_a_type_error() -> None:
    """An object with no tag (a set, say) is refused with the type's name."""
    with pytest.raises(TypeError, match="set"):
        codec.encode({1, 2})


@pytest.mark.parametrize("text", ["not json", '{"v": 1}', '{"t": "money", "v": "1"}',
                                  '{"t": "decimal", "v": "abc"}'])
def test_garbage_is_a_value_error(text: str) -> None:
    """Text that is not a well-formed tagged value raises ValueError."""
    with pytest.raises(ValueError, match="tag"):
        codec.decode(text)


@given(st.text())
def test_safe_text_round_trips_any_string_without_nul(value: str) -> None:
    """Stored text never holds NUL, and decodes to exactly the string given."""
    from sync_service.state.tables import decode_text, encode_text

    stored = encode_text(value)
    assert "\x00" not in stored
    assert decode_text(stored) == value
