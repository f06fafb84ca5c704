"""The one HTTP toolkit every API client of the product uses (Mailtrap, HubSpot, Salesforce,
Pipedrive...): an ``httpx`` JSON client with retries (tenacity), ``Retry-After`` honouring,
pacing (pyrate-limiter), waits that give up on a stop request, token renewal, and error
translation. No connector writes its own retry loop.

Contract
--------
``JsonClient(policy=..., base_url=..., headers=..., pacer=..., refresh=...)`` sends a request
and returns the decoded JSON body (``request``) or an ``Answer`` with status, body and headers
(``exchange``). What an answer *means* is decided in one place, the ``ApiPolicy``:

- ``policy.answer(method, url, response)`` returns the body of a success or raises an error.
  The default implementation asks ``policy.verdict(status, body, response)`` for a ``Verdict``
  and builds the error with ``policy.error(...)``; an API overrides ``verdict`` (HubSpot: 429
  with ``policyName``; Salesforce: 403 ``REQUEST_LIMIT_EXCEEDED`` is RATE_LIMITED and 401
  ``INVALID_SESSION_ID`` is TOKEN_EXPIRED; Pipedrive: 429) and, if it likes, ``message`` (how to
  find the vendor's words in an error body). Every message names the API and the request.
- Default verdicts: 2xx OK; 429 RATE_LIMITED; 408 and 5xx RETRY; 401/403 AUTH; 404 NOT_FOUND;
  anything else FAILED.
- Default errors (``sync_service.errors``): RATE_LIMITED → ``ApiRateLimited`` (with
  ``retry_after`` from the ``Retry-After`` header, seconds or HTTP date, capped at
  ``policy.max_retry_after``; or ``policy.rate_limit_wait`` when the API sends none); EXHAUSTED →
  ``ApiLimitExhausted`` (a daily cap: retriable, but not within this call); RETRY →
  ``ApiRetriable``; TOKEN_EXPIRED → ``ApiTokenExpired``; AUTH → ``ApiAuthError``; NOT_FOUND →
  ``ApiNotFound``; FAILED → ``ApiError`` (a ``SourceError``: the run fails with the message).

What the client does with the errors:

- ``policy.retry_in_call(exc)`` (default: a ``RetriableError`` other than ``ApiLimitExhausted``)
  → retried up to ``max_retries`` times with exponential back-off and jitter; an error with a
  ``retry_after`` waits at least that long (plus jitter). Timeouts and dropped connections become
  ``policy.transport_failure(...)`` (retriable); a URL httpx cannot speak is a ``ConfigError``
  naming ``policy.config_key``. An API that cannot be reached at all (connection refused, DNS,
  connect timeout) raises ``policy.unreachable(...)`` and is retried for at most
  ``unreachable_timeout`` seconds in all (each connect waits at most ``connect_timeout``); then
  the error names the API and its base URL, how long it waited, and ``policy.unreachable_key``.
- ``policy.expired(exc)`` (default: ``ApiTokenExpired``) with a ``refresh`` hook → the hook is
  called once (it returns the headers to replace, e.g. a new ``Authorization``) and the same
  request is sent again; a second expiry in the same call is raised.
- Anything else is raised as the policy built it.

Pacing: a ``Pacing`` object (``acquire(key, should_stop) -> taken | None`` before, ``settle(key,
taken, should_stop)`` after the request) paces every attempt; ``pace_key`` is passed through
(Mailtrap: the account id). ``RatePacer`` paces under published rates such as ``"100/10s"``,
shared by every client in the process that names the same API and identity.

Stopping: inside ``with stoppable(should_stop):`` (module-level, per thread; the Mailtrap
client's ``stoppable`` is the same switch, so a job's stop request reaches every client) a
blocked permit or a back-off gives up as soon as ``should_stop()`` is true and raises
``policy.cancelled(...)`` (default ``ApiCancelled``). A request already on the wire is not
aborted.

``on_response(group, status)`` is called for every answer (status 0 for no answer).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, Protocol

import httpx
import orjson
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from sync_service import __version__, pacing
from sync_service.errors import (
    ApiAuthError,
    ApiCancelled,
    ApiError,
    ApiLimitExhausted,
    ApiNotFound,
    ApiRateLimited,
    ApiRetriable,
    ApiTokenExpired,
    ApiUnreachable,
    ConfigError,
    RetriableError,
)
from sync_service.units import parse_rate

log = structlog.get_logger(__name__)
STOP_CHECK_S = 0.2  # how often a wait looks at should_stop
MAX_RETRY_AFTER = 120.0  # seconds: the longest Retry-After honoured within one call

StopCheck = Callable[[], bool]
ResponseHook = Callable[[str, int], None]
RefreshHook = Callable[[], Mapping[str, str]]
# The stop check of the code running in this thread (see ``stoppable``).
_should_stop: ContextVar[StopCheck | None] = ContextVar("http_should_stop", default=None)


@contextmanager
def stoppable(should_stop: StopCheck) -> Iterator[None]:
    """Within the block (in this thread), every client's waits give up once ``should_stop()``."""
    token = _should_stop.set(should_stop)
    try:
        yield
    finally:
        _should_stop.reset(token)


def current_stop() -> StopCheck | None:
    """The stop check set by the innermost ``stoppable`` of this thread, if any."""
    return _should_stop.get()


# answers --------------------------------------------------------------------------------------
class Verdict(Enum):
    OK = "ok"
    RATE_LIMITED = "rate limited"
    EXHAUSTED = "limit exhausted"
    RETRY = "passing fault"
    TOKEN_EXPIRED = "token expired"  # noqa: S105 - a verdict, not a secret
    AUTH = "credentials refused"
    NOT_FOUND = "not found"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any
    headers: httpx.Headers


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body; its text (first 500 characters) if it is not JSON; None if empty."""
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return response.text[:500]


def retry_after(response: httpx.Response, cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), capped; else None."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return min(max(0.0, seconds), cap)


@dataclass(frozen=True)
class ApiPolicy:
    """What one API's answers mean; subclass and override ``verdict`` (and ``message``)."""

    api: str  # the vendor's name, in every error message ("HubSpot")
    config_key: str = "api_url"  # named by the ConfigError of a URL httpx cannot speak
    max_retry_after: float = MAX_RETRY_AFTER
    rate_limit_wait: float | None = None  # wait after a rate-limit answer without Retry-After
    retry_event: str = "http.retry"  # the log event of a retry (a constant per API)
    unreachable_key: str = "unreachable_timeout"  # the setting named when the API is unreachable

    def verdict(self, status: int, body: Any, response: httpx.Response) -> Verdict:
        if 200 <= status < 300:
            return Verdict.OK
        if status == 429:
            return Verdict.RATE_LIMITED
        if status >= 500 or status == 408:
            return Verdict.RETRY
        if status in (401, 403):
            return Verdict.AUTH
        if status == 404:
            return Verdict.NOT_FOUND
        return Verdict.FAILED

    def message(self, body: Any) -> str:
        """The vendor's words in an error body (a JSON object, a list of them, or text)."""
        if isinstance(body, list) and body and isinstance(body[0], dict):
            return "; ".join(self.message(item) for item in body[:5])
        if isinstance(body, dict):
            code = body.get("errorCode") or body.get("category") or body.get("errorType")
            for key in ("message", "error_info", "error", "errors", "error_description"):
                if isinstance(body.get(key), str) and body[key]:
                    return f"{code}: {body[key]}" if isinstance(code, str) else str(body[key])
        return str(body)[:300]

    def answer(self, method: str, url: str, response: httpx.Response) -> Any:
        """The one place that decides what an answer means: its body, or an error raised."""
        body = json_body(response)
        verdict = self.verdict(response.status_code, body, response)
        where = f"{self.api}: {method} {url} → {response.status_code}"
        if verdict is Verdict.OK:
            if isinstance(body, str):
                raise ApiError(f"{where}: answer is not JSON", api=self.api,
                               status=response.status_code, body=body)
            return body
        wait = retry_after(response, self.max_retry_after)
        raise self.error(verdict, where, response.status_code, body, wait)

    def error(self, verdict: Verdict, where: str, status: int, body: Any,
              wait: float | None) -> Exception:
        """The error of a non-OK verdict (``where`` names the API, request and status)."""
        text = f"{where}: {verdict.value}: {self.message(body)}"
        common: dict[str, Any] = {"api": self.api, "status": status, "body": body}
        if verdict is Verdict.RATE_LIMITED:
            return ApiRateLimited(text, retry_after=wait if wait is not None
                                  else self.rate_limit_wait, **common)
        if verdict is Verdict.EXHAUSTED:
            return ApiLimitExhausted(text, retry_after=wait, **common)
        if verdict is Verdict.RETRY:
            return ApiRetriable(text, **common)
        fatal = {Verdict.TOKEN_EXPIRED: ApiTokenExpired, Verdict.AUTH: ApiAuthError,
                 Verdict.NOT_FOUND: ApiNotFound}.get(verdict, ApiError)
        return fatal(text, **common)

    def transport_failure(self, message: str) -> Exception:
        """A timeout or a dropped connection (retriable)."""
        return ApiRetriable(f"{self.api}: {message}", api=self.api)

    def unreachable(self, message: str) -> Exception:
        """The API could not be reached at all (retriable within the unreachable budget)."""
        return ApiUnreachable(f"{self.api}: {message}", api=self.api)

    def is_unreachable(self, exc: BaseException | None) -> bool:
        return isinstance(exc, ApiUnreachable)

    def bad_url(self, exc: Exception) -> Exception:
        return ConfigError(f"{self.config_key}: {exc}")

    def cancelled(self, message: str) -> Exception:
        return ApiCancelled(f"{self.api}: {message}")

    def retry_in_call(self, exc: BaseException) -> bool:
        return isinstance(exc, RetriableError) and not isinstance(exc, ApiLimitExhausted)

    def expired(self, exc: BaseException) -> bool:
        return isinstance(exc, ApiTokenExpired)


# pacing ---------------------------------------------------------------------------------------
class Pacing(Protocol):
    """Blocks until a request may leave; None if ``should_stop`` said stop while waiting."""

    def acquire(self, key: Any, should_stop: StopCheck | None = None, /) -> float | None: ...

    def settle(self, key: Any, taken: float, should_stop: StopCheck | None = None, /
               ) -> None: ...


def digest(secret: str) -> str:
    """A short digest naming a credential in limiter keys and logs (never the secret itself)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class RatePacer:
    """Paces requests under published rates (``"100/10s"``, ``"5/1s"``...), each with a margin.

    The limiters are process-wide, keyed by ``api``, ``ident`` (e.g. ``digest(token)``) and rate:
    two clients of the same account share them. ``key`` is ignored.
    """

    def __init__(self, api: str, ident: str, rates: Sequence[str]) -> None:
        self._pacing = pacing  # the process-wide limiter registry, shared with the Mailtrap pacer
        self._limits = [(pacing._limit(api, ident, parse_rate(rate)), f"{api}-{ident}-{rate}")
                        for rate in rates]

    def acquire(self, key: Any, should_stop: StopCheck | None = None, /) -> float | None:
        for limit, name in self._limits:
            if not self._pacing._take(limit.limiter, name, should_stop):
                return None
        return time.monotonic()

    def settle(self, key: Any, taken: float, should_stop: StopCheck | None = None, /) -> None:
        held = time.monotonic() - taken
        for limit, name in self._limits:
            if held > limit.margin_s:
                self._pacing._take(limit.limiter, name, should_stop)


# the client -----------------------------------------------------------------------------------
class JsonClient:
    """Sends JSON requests to one API under its ``ApiPolicy`` (see the module docstring)."""

    def __init__(
        self,
        *,
        policy: ApiPolicy,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        pacer: Pacing | None = None,
        max_retries: int = 8,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        on_response: ResponseHook | None = None,
        sleep: Callable[[float], object] = time.sleep,
        refresh: RefreshHook | None = None,
        unreachable_timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.policy = policy
        self._base_url = base_url
        self._unreachable_timeout = unreachable_timeout
        self._http = httpx.Client(
            base_url=base_url, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, connect_timeout)),
            headers={"Accept": "application/json", "User-Agent": f"mailtrap-sync/{__version__}",
                     **(headers or {})},
        )
        self._pacer = pacer
        self._retries = max_retries
        self._jitter = retry_initial * 2
        self._wait = wait_exponential_jitter(multiplier=retry_initial, max=retry_max,
                                             jitter=self._jitter)
        self._on_response = on_response
        self._sleep = sleep
        self._refresh = refresh

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Replace default headers (a new token) for every later request."""
        self._http.headers.update(headers)

    @staticmethod
    def stoppable(should_stop: StopCheck) -> Any:
        """Same as the module-level ``stoppable``."""
        return stoppable(should_stop)

    # requests ---------------------------------------------------------------------------------
    def request(self, method: str, url: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None, data: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None, group: str = "",
                pace_key: Any = None, content: bytes | None = None) -> Any:
        """The decoded body of the answer, with retries, pacing and token renewal.
        ``content``: a JSON body already encoded (instead of ``json``)."""
        return self.exchange(method, url, json=json, params=params, data=data, headers=headers,
                             group=group, pace_key=pace_key, content=content).body

    def exchange(self, method: str, url: str, *, json: Any = None,
                 params: Mapping[str, Any] | None = None, data: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, group: str = "",
                 pace_key: Any = None, content: bytes | None = None) -> Answer:
        """Like ``request``, but the whole ``Answer`` (status, body, headers)."""
        renewed = False
        while True:
            try:
                for attempt in self.retrying():
                    with attempt:
                        return self.send(method, url, json=json, params=params, data=data,
                                         headers=headers, group=group, pace_key=pace_key,
                                         content=content)
            except Exception as exc:
                if renewed or self._refresh is None or not self.policy.expired(exc):
                    raise
                renewed = True
                log.info("http.token_renewed", api=self.policy.api)
                self.set_headers(self._refresh())
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def retrying(self) -> Retrying:
        """The retry loop of one call (for callers that must act between attempts)."""
        return Retrying(
            stop=stop_after_attempt(self._retries + 1)
            | _UnreachableFor(self._unreachable_timeout, self.policy),
            wait=self._backoff,
            retry=retry_if_exception(self.policy.retry_in_call),
            before_sleep=self._log_retry,
            sleep=self._backoff_sleep,
            retry_error_callback=self._give_up,
        )

    def _give_up(self, state: RetryCallState) -> Any:
        """Re-raise the last error; an unreachable API is named with its URL and the wait."""
        error = state.outcome.exception() if state.outcome else None
        if error is not None and self.policy.is_unreachable(error):
            raise self.policy.unreachable(
                f"{self.policy.api} at {self._base_url} cannot be reached ({error}); gave up "
                f"after {state.seconds_since_start or 0.0:.0f}s and {state.attempt_number} "
                f"attempts ({self.policy.unreachable_key})"
            ) from error
        if error is not None:
            raise error
        raise AssertionError("tenacity gave up without an error")  # pragma: no cover

    def send(self, method: str, url: str, *, json: Any = None,
             params: Mapping[str, Any] | None = None, data: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None, group: str = "",
             pace_key: Any = None, content: bytes | None = None) -> Answer:
        """One paced attempt, no retry: the ``Answer``, or the policy's error."""
        stop = _should_stop.get()
        taken = None if self._pacer is None else self._pacer.acquire(pace_key, stop)
        if self._pacer is not None and taken is None:
            raise self.policy.cancelled(f"{method} {url}: not sent, stop requested")
        try:
            response = self._exchange(method, url, json=json, params=params, data=data,
                                      headers=headers, group=group, content=content)
        finally:
            if self._pacer is not None and taken is not None:
                self._pacer.settle(pace_key, taken, stop)
        self._record(group, response.status_code)
        body = self.policy.answer(method, url, response)
        return Answer(response.status_code, body, response.headers)

    def pause(self, seconds: float, should_stop: StopCheck | None = None) -> bool:
        """Sleep ``seconds``, looking at ``should_stop`` as it goes; False if it said stop."""
        if should_stop is None:
            self._sleep(seconds)
            return True
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if should_stop():
                return False
            self._sleep(min(STOP_CHECK_S, left))
        return not should_stop()

    # plumbing ---------------------------------------------------------------------------------
    def _exchange(self, method: str, url: str, *, json: Any, params: Mapping[str, Any] | None,
                  data: Mapping[str, str] | None, headers: Mapping[str, str] | None,
                  group: str, content: bytes | None = None) -> httpx.Response:
        """One HTTP exchange; transport failures become the policy's retriable error."""
        if json is not None:
            content = orjson.dumps(json)
        sent = dict(headers or {})
        if content is not None:
            sent["Content-Type"] = "application/json"
        try:
            return self._http.request(method, url, content=content, data=data,
                                      params=params, headers=sent or None)
        except httpx.UnsupportedProtocol as exc:
            raise self.policy.bad_url(exc) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._record(group, 0)
            raise self.policy.unreachable(
                f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            self._record(group, 0)
            raise self.policy.transport_failure(f"{method} {url}: timed out") from exc
        except httpx.TransportError as exc:
            self._record(group, 0)
            raise self.policy.transport_failure(
                f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    def _record(self, group: str, status: int) -> None:
        if self._on_response is not None:
            self._on_response(group, status)

    def _backoff(self, state: RetryCallState) -> float:
        wait = float(self._wait(state))
        error = state.outcome.exception() if state.outcome else None
        after = getattr(error, "retry_after", None)
        if isinstance(after, int | float):
            # Honour the API's word, with jitter so that waiting clients do not return at once.
            return max(wait, float(after) + random.uniform(0, self._jitter))  # noqa: S311
        if self.policy.is_unreachable(error):  # never sleep past the unreachable budget
            left = self._unreachable_timeout - (state.seconds_since_start or 0.0)
            return max(0.0, min(wait, left))
        return wait

    def _backoff_sleep(self, seconds: float) -> None:
        if not self.pause(seconds, _should_stop.get()):
            raise self.policy.cancelled(f"stop requested during a {seconds:.1f}s retry back-off")

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(self.policy.retry_event, api=self.policy.api, attempt=state.attempt_number,
                    error=str(error), wait_s=round(state.upcoming_sleep, 2))


class _UnreachableFor(stop_base):
    """Stop once the API has been unreachable for ``seconds`` since the first attempt."""

    def __init__(self, seconds: float, policy: ApiPolicy) -> None:
        self.seconds = seconds
        self.policy = policy

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return (self.policy.is_unreachable(error)
                and (retry_state.seconds_since_start or 0.0) >= self.seconds)
