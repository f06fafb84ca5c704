"""Watermarks: per pipeline, typed round trips, reset."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from sync_service.errors import StateError
from sync_service.models import Position
from sync_service.state import StateStore
from sync_service.state.tables import watermarks

CURSORS: list[Any] = [
    datetime(2024, 5, 1, 12, 30, 5, 123456),
    datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=-7))),
    date(2024, 5, 1), 42, 2.5, Decimal("12.340"), "2024-05-01",
    UUID("12345678-1234-5678-1234-567812345678"),
]


@pytest.mark.parametrize("cursor", CURSORS, ids=repr)
def test_watermark_keeps_cursor_and_key_types(store: StateStore, cursor: Any) -> None:
    """Cursor and key come back equal and of the same type (naive stays naive, aware aware)."""
    store.set_watermark("p", Position(cursor, 10**12))
    got = store.get_watermark("p")
    assert got == Position(cursor, 10**12)
    assert got is not None
    assert type(got.cursor) is type(cursor)
    assert type(got.key) is int
    if isinstance(cursor, datetime):
        assert got.cursor.utcoffset() == cursor.utcoffset()


def test_watermark_is_per_pipeline_and_moves(store: StateStore) -> None:
    """Each pipeline has its own watermark; setting it again replaces it."""
    store.set_watermark("a", Position(1, "k1"))
    store.set_watermark("b", Position(5, "k5"))
    store.set_watermark("a", Position(2, "k2"))
    assert store.get_watermark("a") == Position(2, "k2")
    assert store.get_watermark("b") == Position(5, "k5")
    assert store.get_watermark("c") is None


def test_setting_none_resets_the_watermark(store: StateStore) -> None:
    """set_watermark(None) forgets the position, so the next run reads from the start."""
    store.set_watermark("p", Position(1, 1))
    store.set_watermark("p", None)
    assert store.get_watermark("p") is None


def test_unstorable_watermark_is_refused_and_keeps_the_old_one(store: StateStore) -> None:
    """A cursor of an unsupported type raises StateError and leaves the stored position."""
    store.set_watermark("p", Position(1, 1))
    with pytest.raises(StateError, match="cannot store the watermark"):
        store.set_watermark("p", Position(object(), 1))
    assert store.get_watermark("p") == Position(1, 1)


def test_corrupt_watermark_is_a_state_error(store: StateStore) -> None:
    """A watermark row that does not decode raises StateError naming the pipeline."""
    store.set_watermark("p", Position(1, 1))
    with store.engine.begin() as conn:
        conn.execute(sa.update(watermarks).values(cursor_value="oops"))
    with pytest.raises(StateError, match="watermark of pipeline 'p' is unreadable"):
        store.get_watermark("p")
