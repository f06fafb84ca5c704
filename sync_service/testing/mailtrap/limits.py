"""Time, rate limits, import progress and fault injection knobs of the Mailtrap double.

Everything here is plain configuration or bookkeeping; the double reads it under its lock. A
``FakeClock`` can stand in for ``time.monotonic`` so rate-limit windows and timed imports are
driven by the test, not by the wall clock.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

DropError = Literal["remote_protocol", "read"]
Fault = Literal["429", "500", "drop_before", "drop_after"]


class FakeClock:
    """A settable monotonic clock: ``clock()`` reads it, ``clock.advance(s)`` moves it on."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds


@dataclass(frozen=True)
class RateLimits:
    """Mailtrap's documented limits: 200 contacts requests / 60 s per account, 150 / 10 s per token.

    A limit of None switches that limit off.
    """

    account_requests: int | None = 200
    account_window: float = 60.0
    token_requests: int | None = 150
    token_window: float = 10.0


class SlidingWindow:
    """Counts admitted events per key over the last ``window`` seconds."""

    def __init__(self) -> None:
        self._events: dict[object, deque[float]] = {}

    def admits(self, key: object, now: float, limit: int | None, window: float) -> bool:
        """Whether one more event fits; does not record it."""
        if limit is None:
            return True
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - window:
            events.popleft()
        return len(events) < limit

    def record(self, key: object, now: float) -> None:
        self._events.setdefault(key, deque()).append(now)


@dataclass(frozen=True)
class ImportPolicy:
    """When an accepted import becomes finished.

    An import answers ``created`` until it is first polled, then ``started``; it becomes
    ``finished`` (or ``failed``) once every configured condition holds: at least
    ``polls_to_finish`` status polls, and at least ``seconds_to_finish`` seconds (double clock)
    since it was posted. None disables a condition. Time-only imports also finish when nobody
    polls them (the double settles due imports on every request and inspection). The default
    finishes on the second poll.
    """

    polls_to_finish: int | None = 2
    seconds_to_finish: float | None = None

    def is_due(self, polls: int, age: float) -> bool:
        polls_ok = self.polls_to_finish is None or polls >= self.polls_to_finish
        age_ok = self.seconds_to_finish is None or age >= self.seconds_to_finish
        return polls_ok and age_ok


@dataclass
class Faults:
    """Fault injection, changeable on the live double (plain attribute assignment).

    Rates are probabilities per request (``error_rate`` → 500 ``{"errors": "Unexpected error"}``;
    ``drop_rate`` → the connection is dropped without a response), drawn from the double's seeded
    random generator. ``drop_applied_rate`` is the probability that a dropped request was carried
    out before the drop; ``drop_error`` picks the failure the client sees (in-process:
    ``httpx.RemoteProtocolError`` or ``httpx.ReadError``; real server: a closed or reset socket),
    None choosing at random. ``import_failure_rate`` is the probability that an import ends
    ``failed`` (nothing applied). ``reject_emails`` always get a 422 on import (and on
    single-contact calls). Forced outcomes (see ``MailtrapDouble.force``) come first.
    ``quota_422``: every import is refused with a 422 whose every contact says the contacts
    limit is reached. ``uncounted``: finished imports report that many contacts fewer in
    ``updated_contacts_count`` than they applied (a miscounting Mailtrap).
    """

    error_rate: float = 0.0
    drop_rate: float = 0.0
    drop_applied_rate: float = 0.5
    drop_error: DropError | None = None
    import_failure_rate: float = 0.0
    reject_emails: set[str] = field(default_factory=set)
    forced: deque[Fault] = field(default_factory=deque)
    quota_422: bool = False
    uncounted: int = 0
