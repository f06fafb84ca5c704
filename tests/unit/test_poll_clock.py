"""The poll clock of an import in flight: when it is polled next, and when waiting ends."""

from __future__ import annotations

import pytest

from sync_service.delivery_plan import PollClock


def test_first_poll_is_due_at_once_then_intervals_grow_by_half_up_to_the_cap() -> None:
    """Polled as soon as posted, then after 2 s, 3 s, 4.5 s, then never more than 5 s apart."""
    clock = PollClock.start(100.0, interval=2.0, max_interval=5.0, timeout=3600.0)
    assert clock.wait(100.0) == 0.0
    now, gaps = 100.0, []
    for _ in range(5):
        assert clock.polled(now)
        gaps.append(clock.due - now)
        now = clock.due
    assert gaps == [2.0, 3.0, 4.5, 5.0, 5.0]


def test_wait_counts_down_to_the_next_poll() -> None:
    """``wait`` is the time left until the poll is due, never negative."""
    clock = PollClock.start(0.0, interval=2.0, max_interval=30.0, timeout=60.0)
    clock.polled(0.0)
    assert clock.wait(0.5) == pytest.approx(1.5)
    assert clock.wait(7.0) == 0.0


def test_a_poll_that_would_fall_past_the_deadline_is_refused() -> None:
    """With a 10 s timeout, a still-running import is given up on once the next poll would come
    after the deadline (as ``wait_for_import`` does), and the due time is left unchanged."""
    clock = PollClock.start(0.0, interval=4.0, max_interval=30.0, timeout=10.0)
    assert clock.polled(0.0)  # next at 4
    assert clock.polled(4.0)  # next at 10
    due = clock.due
    assert not clock.polled(10.0)
    assert clock.due == due
