"""Request pacing under Mailtrap's published limits (invariant 6).

Mailtrap allows 200 contacts-API requests per 60 s per account, and 150 requests per 10 s per API
token. A 429 must stay an exception, so every request first takes a permit from both limits.
The pacers are shared by every client (and so every pipeline) in the process: one per account and
one per token, keyed by the account id and a digest of the token (never the token itself).
"""

from __future__ import annotations

import hashlib
import threading

from pyrate_limiter import Duration, Limiter, Rate

from sync_service.settings import parse_rate

_lock = threading.Lock()
_limiters: dict[tuple[str, str, str], Limiter] = {}


def _limiter(scope: str, ident: str, rate: str) -> Limiter:
    count, seconds = parse_rate(rate)
    key = (scope, ident, rate)
    with _lock:
        if key not in _limiters:
            _limiters[key] = Limiter(Rate(count, int(seconds * Duration.SECOND)))
        return _limiters[key]


class Pacer:
    """Blocks until a request to Mailtrap fits under both the account and the token limits."""

    def __init__(self, *, token: str, account_rate: str, token_rate: str) -> None:
        self._token_id = hashlib.sha256(token.encode()).hexdigest()[:16]
        self._token = _limiter("token", self._token_id, token_rate)
        self._account_rate = account_rate
        self._accounts: dict[int, Limiter] = {}

    def acquire(self, account_id: int | None) -> None:
        """Take one permit; ``account_id`` None for requests outside the contacts API."""
        if account_id is not None:
            limiter = self._accounts.get(account_id)
            if limiter is None:
                limiter = _limiter("account", str(account_id), self._account_rate)
                self._accounts[account_id] = limiter
            limiter.try_acquire(f"account-{account_id}", blocking=True)
        self._token.try_acquire(f"token-{self._token_id}", blocking=True)
