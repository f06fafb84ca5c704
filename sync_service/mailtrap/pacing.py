"""Request pacing under Mailtrap's published limits (invariant 6).

Mailtrap allows 200 contacts-API requests per 60 s per account, and 150 requests per 10 s per API
token. A 429 must stay an exception, so every request first takes a permit from both limits
(pyrate-limiter's sliding-window log; a blocked caller sleeps until the oldest permit leaves the
window). The limiters are shared by every client (and so every pipeline and thread) in the
process: one per account and one per token, keyed by the account id and a digest of the token
(never the token itself) and by the configured rate.

Two choices worth knowing:

- **A margin on each window.** The limiter counts a request when its permit is taken; Mailtrap
  counts it when it arrives. Two requests one window apart can arrive less than a window apart
  when the first was slower on the wire, so each window is widened by 2 % (at least 100 ms).
  This costs 2 % of the budget and keeps a burst from tipping over the limit.
- **Account first, then token.** With one token per account (the usual case) the account limit
  is the one that binds, so the long wait happens first and the token permit is taken just
  before the request leaves.

``acquire`` can be told to give up (``should_stop``), so a stop request (SIGTERM) never waits for
a window that may be a minute away.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from pyrate_limiter import Duration, Limiter, Rate

from sync_service.settings import parse_rate

MARGIN_SHARE = 0.02  # of each window, see the module docstring
MIN_MARGIN_S = 0.1
STOP_CHECK_S = 0.2  # how often a blocked acquire looks at should_stop

_lock = threading.Lock()
_limiters: dict[tuple[str, str, str], Limiter] = {}


def window_ms(seconds: float) -> int:
    """The window the limiter enforces for a published window of ``seconds``: with the margin."""
    return round((seconds + max(MIN_MARGIN_S, seconds * MARGIN_SHARE)) * Duration.SECOND)


def _limiter(scope: str, ident: str, rate: str) -> Limiter:
    count, seconds = parse_rate(rate)
    key = (scope, ident, rate)
    with _lock:
        if key not in _limiters:
            _limiters[key] = Limiter(Rate(count, window_ms(seconds)))
        return _limiters[key]


def _take(limiter: Limiter, name: str, should_stop: Callable[[], bool] | None) -> bool:
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

    def __init__(self, *, token: str, account_rate: str, token_rate: str) -> None:
        self._token_id = hashlib.sha256(token.encode()).hexdigest()[:16]
        self._token = _limiter("token", self._token_id, token_rate)
        self._account_rate = account_rate

    def acquire(
        self, account_id: int | None, should_stop: Callable[[], bool] | None = None
    ) -> bool:
        """Take one permit of each limit; ``account_id`` None outside the contacts API.

        Returns False (having sent nothing) when ``should_stop`` says so while waiting.
        """
        if account_id is not None:
            account = _limiter("account", str(account_id), self._account_rate)
            if not _take(account, f"account-{account_id}", should_stop):
                return False
        return _take(self._token, f"token-{self._token_id}", should_stop)
