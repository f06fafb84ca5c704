"""Pacing: blocking permits under both limits, shared in the process, interruptible.

Limiters are shared process-wide by account, token digest and rate, so each test uses an account
id and a token of its own.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from sync_service.mailtrap import pacing
from sync_service.mailtrap.client import MailtrapClient
from sync_service.mailtrap.pacing import Pacer, window_ms
from sync_service.settings import PacingSettings
from sync_service.testing.mailtrap.double import MailtrapDouble, RateLimits
from sync_service.units import Rate
from tests.support.double_fixtures import BASE_URL, validating_transport

_accounts = itertools.count(90_001)


def _max_in_window(times: Sequence[float], window: float) -> int:
    ordered, best, start = sorted(times), 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _unique(prefix: str) -> tuple[int, str]:
    account = next(_accounts)
    return account, f"{prefix}-{account}"


def test_defaults_are_mailtraps_published_limits() -> None:
    """[mailtrap.pacing] defaults to 200/60s per account and 150/10s per token; junk is refused."""
    assert PacingSettings().model_dump() == {"account": "200/60s", "token": "150/10s"}
    assert PacingSettings(account="20/2s").account == Rate(20, 2.0)  # parsed once, at load
    with pytest.raises(ValidationError, match="N/Ts"):
        PacingSettings(account="fast")


def test_each_window_gets_a_margin() -> None:
    """The enforced window is the published one plus 2 % (at least 100 ms)."""
    assert window_ms(60) == 61_200
    assert window_ms(10) == 10_200
    assert window_ms(2) == 2_100


def test_blocking_acquire_waits_for_a_free_permit() -> None:
    """Permits beyond the account rate block until the window frees one; none is skipped."""
    account, token = _unique("block")
    pacer = Pacer(token=token, account_rate="4/0.5s", token_rate="1000/10s")
    taken = []
    for _ in range(10):
        assert pacer.acquire(account) is not None
        taken.append(time.monotonic())
    assert len(taken) == 10
    assert _max_in_window(taken, 0.5) <= 4


def test_token_limit_applies_across_accounts() -> None:
    """The token's limit counts requests to every account (and outside any account)."""
    first, token = _unique("tok")
    second = next(_accounts)
    pacer = Pacer(token=token, account_rate="1000/10s", token_rate="3/0.5s")
    taken = []
    for account in [first, second, None, first, second, None, first, second]:
        assert pacer.acquire(account) is not None
        taken.append(time.monotonic())
    assert _max_in_window(taken, 0.5) <= 3


def test_limiters_are_shared_by_every_pacer_in_the_process() -> None:
    """Two pacers (two pipelines, two threads) draw from the same account and token limits."""
    account, token = _unique("shared")
    pacers = [Pacer(token=token, account_rate="4/0.5s", token_rate="1000/10s") for _ in range(2)]
    taken: list[float] = []
    lock = threading.Lock()

    def work(pacer: Pacer) -> None:
        for _ in range(5):
            pacer.acquire(account)
            with lock:
                taken.append(time.monotonic())

    threads = [threading.Thread(target=work, args=(p,)) for p in pacers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(taken) == 10
    assert _max_in_window(taken, 0.5) <= 4


def test_a_slow_request_is_counted_again_when_it_ends() -> None:
    """A request that outlasts the margin may reach the server as late as it ends; counted
    again then, fast ones after it still fit the window as the server counts arrivals."""
    account, token = _unique("slow")
    pacer = Pacer(token=token, account_rate="3/0.5s", token_rate="1000/10s")
    arrivals = []
    for slow in (True, False, False, False, False, False):
        taken = pacer.acquire(account)
        assert taken is not None
        if slow:
            time.sleep(0.4)  # a large body: it arrives only now
        arrivals.append(time.monotonic())
        pacer.settle(account, taken)
    assert _max_in_window(arrivals, 0.5) <= 3


def test_the_token_itself_is_never_a_key() -> None:
    """Limiters are keyed by a digest of the token, never by the token."""
    account, token = _unique("secret-token-value")
    Pacer(token=token, account_rate="5/1s", token_rate="5/1s").acquire(account)
    assert not any(token in str(key) for key in pacing._limits)


def test_stop_gives_up_a_blocked_acquire() -> None:
    """A blocked acquire returns None soon after should_stop turns true, taking no permit."""
    account, token = _unique("stop")
    pacer = Pacer(token=token, account_rate="1/60s", token_rate="1000/10s")
    assert pacer.acquire(account) is not None
    stop = threading.Event()
    result: list[float | None] = []
    thread = threading.Thread(target=lambda: result.append(pacer.acquire(account, stop.is_set)))
    thread.start()
    thread.join(timeout=0.3)
    assert thread.is_alive()
    stop.set()
    thread.join(timeout=5)
    assert result == [None]


def test_client_stays_under_the_configured_rate(double: MailtrapDouble) -> None:
    """With account = "20/2s", no 2 s window holds more than 20 requests, and no 429 comes."""
    account, token = _unique("client")
    double.add_account(account, "Paced", token=token)
    double.rate_limits = RateLimits(account_requests=20, account_window=2.0,
                                    token_requests=150, token_window=10.0)
    pacer = Pacer(token=token, account_rate="20/2s", token_rate="150/10s")
    with MailtrapClient(token=token, base_url=BASE_URL, account_id=account,
                        transport=validating_transport(double), pacer=pacer,
                        max_retries=0) as client:
        for _ in range(45):
            client.lists()
    assert len(double.requests()) == 45
    assert double.max_requests_in_window(2.0, contacts_only=True) <= 20
    assert [r.status for r in double.requests()] == [200] * 45
