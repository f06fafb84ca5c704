"""Request pacing under Mailtrap's published limits (invariant 6).

Mailtrap allows 200 contacts-API requests per 60 s per account, and 150 requests per 10 s per API
token. A 429 must stay an exception, so every request first takes a permit from both limits
(pyrate-limiter's sliding-window log; a blocked caller sleeps until the oldest permit leaves the
window). The limiters are shared by every client (and so every pipeline and thread) in the
process: one per account and one per token, keyed by the account id and a digest of the token
(never the token itself) and by the configured rate.

The limiter counts a request when its permit is taken; Mailtrap counts it when it arrives, which
can be as late as when it ends (a large import body takes a while to upload). Two rules keep
Mailtrap's count at or under the limit all the same:

- **A margin on each window**: 2 % of it, at least 100 ms, for ordinary latency.
- **A slow request is counted again when it ends** (``settle``): one more permit from each limit
  whose margin it outlasted. For requests made one after another (a run) this bounds every
  window as Mailtrap counts it, whatever the latency; requests made at the same time from several
  threads can still overlap by as many as are in flight.

Account first, then token: with one token per account the account limit is the one that binds,
so the long wait happens first and the token permit is taken just before the request leaves.
Waits can be given up (``should_stop``), so a stop request never waits for a window that may be
a minute away.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyrate_limiter import Duration, Limiter, Rate

from sync_service.units import Rate as ConfiguredRate
from sync_service.units import parse_rate

MARGIN_SHARE = 0.02  # of each window, see the module docstring
MIN_MARGIN_S = 0.1
STOP_CHECK_S = 0.2  # how often a blocked acquire looks at should_stop

StopCheck = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class _Limit:
    limiter: Limiter
    margin_s: float


_lock = threading.Lock()
_limits: dict[tuple[str, str, str], _Limit] = {}


def margin(seconds: float) -> float:
    """The margin added to a published window of ``seconds``."""
    return max(MIN_MARGIN_S, seconds * MARGIN_SHARE)


def window_ms(seconds: float) -> int:
    """The window the limiter enforces for a published window of ``seconds``: with the margin."""
    return round((seconds + margin(seconds)) * Duration.SECOND)


def _limit(scope: str, ident: str, rate: ConfiguredRate) -> _Limit:
    count, seconds = rate
    key = (scope, ident, f"{count}/{seconds}")
    with _lock:
        if key not in _limits:
            _limits[key] = _Limit(Limiter(Rate(count, window_ms(seconds))), margin(seconds))
        return _limits[key]


def _take(limiter: Limiter, name: str, should_stop: StopCheck | None) -> bool:
    """One permit, blocking; False if ``should_stop`` turned true while waiting for it."""
    if should_stop is None:
        # Blocking without a timeout only returns False for a weight the rate can never admit,
        # and a weight of 1 always fits a rate of at least 1.
        return bool(limiter.try_acquire(name, blocking=True))
    while not limiter.try_acquire(name, blocking=True, timeout=STOP_CHECK_S):
        if should_stop():
            return False
    return True


class Pacer:
    """Blocks until a request to Mailtrap fits under both the account and the token limits."""

    def __init__(self, *, token: str, account_rate: ConfiguredRate | str,
                 token_rate: ConfiguredRate | str) -> None:
        """Rates as configured (``PacingSettings``); text such as ``"200/60s"`` is parsed here."""
        self._token_id = hashlib.sha256(token.encode()).hexdigest()[:16]
        self._token = _limit("token", self._token_id, parse_rate(token_rate))
        self._account_rate = parse_rate(account_rate)

    def acquire(self, account_id: int | None, should_stop: StopCheck | None = None
                ) -> float | None:
        """Take one permit of each limit; ``account_id`` None outside the contacts API.

        Returns when the permits were taken (for ``settle``), or None, having taken no more,
        when ``should_stop`` says so while waiting.
        """
        for limit, name in self._limits(account_id):
            if not _take(limit.limiter, name, should_stop):
                return None
        return time.monotonic()

    def settle(self, account_id: int | None, taken: float,
               should_stop: StopCheck | None = None) -> None:
        """After the request: count it again under each limit whose margin it outlasted."""
        held = time.monotonic() - taken
        for limit, name in self._limits(account_id):
            if held > limit.margin_s:
                _take(limit.limiter, name, should_stop)

    def _limits(self, account_id: int | None) -> list[tuple[_Limit, str]]:
        found = [] if account_id is None else [
            (_limit("account", str(account_id), self._account_rate), f"account-{account_id}")]
        return [*found, (self._token, f"token-{self._token_id}")]
