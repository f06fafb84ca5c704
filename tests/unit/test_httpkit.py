"""The shared HTTP toolkit: policies decide what answers mean; the client retries, renews, paces."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sync_service.errors import (
    ApiAuthError,
    ApiCancelled,
    ApiError,
    ApiLimitExhausted,
    ApiNotFound,
    ApiRateLimited,
    ApiRetriable,
    ApiTokenExpired,
    ConfigError,
)
from sync_service.httpkit import ApiPolicy, JsonClient, RatePacer, Verdict, stoppable


@dataclass(frozen=True)
class _Policy(ApiPolicy):
    """A CRM-like policy: 403 with REQUEST_LIMIT_EXCEEDED is a rate limit, 401 means expired."""

    api: str = "Acme CRM"

    def verdict(self, status: int, body: Any, response: httpx.Response) -> Verdict:
        if status == 403 and "REQUEST_LIMIT_EXCEEDED" in str(body):
            return Verdict.RATE_LIMITED
        if status == 429 and isinstance(body, dict) and body.get("policyName") == "DAILY":
            return Verdict.EXHAUSTED
        if status == 401:
            return Verdict.TOKEN_EXPIRED
        return super().verdict(status, body, response)


class _Script:
    """Answers from a list of (status, body) pairs, recording each request's headers."""

    def __init__(self, *answers: tuple[int, Any] | Exception) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer[0], json=answer[1])


def _client(script: _Script, **kwargs: Any) -> JsonClient:
    options: dict[str, Any] = {"retry_initial": 0.001, "retry_max": 0.01, "max_retries": 3,
                               "sleep": lambda _s: None}
    options.update(kwargs)
    return JsonClient(policy=_Policy(), base_url="https://crm.test",
                      transport=httpx.MockTransport(script), **options)


def test_vendor_rate_limit_answer_is_retried() -> None:
    """A 403 the policy calls a rate limit is backed off and retried until the answer comes."""
    script = _Script((403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "slow"}]),
                     (200, {"ok": 1}))
    with _client(script) as client:
        assert client.request("GET", "/x") == {"ok": 1}
    assert len(script.seen) == 2


def test_limit_exhausted_is_not_retried_in_call() -> None:
    """A daily-limit answer raises ApiLimitExhausted at once: retriable later, not now."""
    script = _Script((429, {"policyName": "DAILY", "message": "daily"}))
    with _client(script) as client, pytest.raises(ApiLimitExhausted, match="Acme CRM"):
        client.request("GET", "/x")
    assert len(script.seen) == 1


def test_expired_token_is_renewed_once_and_the_request_repeated() -> None:
    """A token-expired answer calls refresh, and the same request goes out with the new header."""
    script = _Script((401, {"message": "expired"}), (200, {"page": 2}))
    with _client(script, headers={"Authorization": "Bearer old"},
                 refresh=lambda: {"Authorization": "Bearer new"}) as client:
        assert client.request("GET", "/page/2") == {"page": 2}
    assert [r.headers["Authorization"] for r in script.seen] == ["Bearer old", "Bearer new"]
    assert {r.url.path for r in script.seen} == {"/page/2"}


def test_token_expiring_again_after_renewal_is_raised() -> None:
    """Two expiries in one call raise ApiTokenExpired (an ApiAuthError) after one renewal."""
    renewals: list[int] = []
    script = _Script((401, {"message": "expired"}))
    with _client(script, refresh=lambda: renewals.append(1) or {}) as client, \
            pytest.raises(ApiTokenExpired):
        client.request("GET", "/x")
    assert renewals == [1]
    assert len(script.seen) == 2


@pytest.mark.parametrize(("status", "error"), [
    (400, ApiError), (403, ApiAuthError), (404, ApiNotFound), (409, ApiError),
])
def test_fatal_answers_name_the_api_and_its_message(status: int, error: type[Exception]) -> None:
    """Other 4xx fail at once with the policy's error, naming the API and the vendor message."""
    script = _Script((status, {"errorCode": "MALFORMED_QUERY", "message": "No such column"}))
    with _client(script) as client, pytest.raises(error) as raised:
        client.request("GET", "/q")
    assert "Acme CRM" in str(raised.value)
    assert "No such column" in str(raised.value)
    assert not isinstance(raised.value, ApiRetriable)
    assert len(script.seen) == 1


def test_retry_after_sets_the_wait() -> None:
    """A 429's Retry-After is waited (plus jitter) before the next attempt."""
    sleeps: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if not sleeps:
            return httpx.Response(429, json={}, headers={"Retry-After": "4"})
        return httpx.Response(200, json=[])

    client = JsonClient(policy=_Policy(), base_url="https://crm.test", retry_initial=0.01,
                        transport=httpx.MockTransport(answer), sleep=sleeps.append)
    assert client.request("GET", "/x") == []
    assert len(sleeps) == 1
    assert 4.0 <= sleeps[0] <= 4.1


def test_rate_limit_without_header_uses_the_policy_wait() -> None:
    """A rate-limit answer without Retry-After carries the policy's rate_limit_wait."""
    script = _Script((429, {"policyName": "TEN_SECONDLY_ROLLING"}))
    client = JsonClient(policy=ApiPolicy(api="HubSpotish", rate_limit_wait=2.5),
                        transport=httpx.MockTransport(script), max_retries=0,
                        base_url="https://crm.test")
    with pytest.raises(ApiRateLimited) as raised:
        client.request("GET", "/x")
    assert raised.value.retry_after == 2.5


def test_connection_errors_are_retried_and_bad_schemes_are_config_errors() -> None:
    """Dropped connections are retried; a URL scheme httpx cannot speak names the config key."""
    script = _Script(httpx.ConnectError("refused"), (200, {"a": 1}))
    with _client(script) as client:
        assert client.request("GET", "/x") == {"a": 1}
    bad = JsonClient(policy=ApiPolicy(api="X", config_key="pipelines.source.api_url"),
                     base_url="ftp://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"pipelines\.source\.api_url"):
        bad.request("GET", "/x")


def test_stop_cuts_a_backoff_short() -> None:
    """Inside stoppable(), a stop request during a retry back-off raises ApiCancelled."""
    script = _Script((500, {}))
    stop = threading.Event()
    client = _client(script, retry_initial=30.0, retry_max=60.0, sleep=time.sleep,
                     on_response=lambda _g, _s: stop.set())
    with stoppable(stop.is_set), pytest.raises(ApiCancelled):
        client.request("GET", "/x")
    assert len(script.seen) == 1


def test_rate_pacer_blocks_past_the_rate_until_stopped() -> None:
    """A RatePacer admits the published count per window; the next acquire waits (and stops)."""
    pacer = RatePacer("test-api", "ident-1", ["2/60s"])
    assert pacer.acquire(None, None) is not None
    assert pacer.acquire(None, None) is not None
    calls = iter([False, True])
    assert pacer.acquire(None, lambda: next(calls)) is None
