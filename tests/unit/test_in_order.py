"""The run-time order check: records must come in strictly increasing (cursor, key) order."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sync_service.connector import in_order
from sync_service.errors import SourceError
from sync_service.models import SourceRecord


def _r(key: object, cursor: object) -> SourceRecord:
    return SourceRecord(key=key, cursor=cursor, values={})


def test_ordered_records_pass_through_unchanged() -> None:
    """None cursors first, then ties ordered by key, then higher cursors: all pass, in order."""
    records = [_r(1, None), _r(5, None), _r(2, 10), _r(3, 10), _r(1, 11)]
    assert list(in_order(records, "sql")) == records


@pytest.mark.parametrize("pair", [
    [_r(2, 10), _r(1, 10)],          # key behind within a tie
    [_r(1, 11), _r(2, 10)],          # cursor behind
    [_r(1, 10), _r(1, 10)],          # the same position twice
    [_r(1, 10), _r(2, None)],        # back into the NULL-cursor phase
])
def test_a_record_not_after_the_previous_fails_naming_the_connector(
        pair: list[SourceRecord]) -> None:
    """A record not strictly after the previous one raises SourceError naming the connector."""
    with pytest.raises(SourceError, match="connector hubspot broke"):
        list(in_order(pair, "hubspot"))


def test_incomparable_cursors_fail_with_a_clear_error() -> None:
    """Cursors that cannot be compared (a str after a datetime) fail instead of passing."""
    records = [_r(1, datetime(2026, 1, 1, tzinfo=UTC)), _r(2, "2026-01-02")]
    with pytest.raises(SourceError, match="cannot be ordered"):
        list(in_order(records, "x"))


def test_a_connector_object_is_named_by_its_class() -> None:
    """Given the connector itself, the error names its class."""

    class MyConnector:
        pass

    with pytest.raises(SourceError, match="connector MyConnector broke"):
        list(in_order([_r(2, 1), _r(1, 1)], MyConnector()))
