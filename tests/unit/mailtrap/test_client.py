"""The Mailtrap client: which answers are retried, how it backs off, lists, polling, stopping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from sync_service.errors import (
    ConfigError,
    MailtrapAuthError,
    MailtrapError,
    MailtrapNotFound,
    MailtrapRateLimited,
    MailtrapRetriable,
    MailtrapValidationError,
)
from sync_service.mailtrap.answers import MAX_RETRY_AFTER
from sync_service.mailtrap.client import MailtrapCancelled, MailtrapClient
from sync_service.mailtrap.pacing import Pacer
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, ImportPolicy, MailtrapDouble
from tests.support.double_fixtures import BASE_URL, validating_transport


class _Script:
    """An httpx transport answering from a list of outcomes (a status, or an exception)."""

    def __init__(self, *outcomes: int | Exception, headers: dict[str, str] | None = None,
                 body: Any = None) -> None:
        self.outcomes, self.headers, self.body = list(outcomes), headers or {}, body
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        body = self.body if outcome < 300 else {"errors": "nope"}
        return httpx.Response(outcome, json=body if body is not None else [],
                              headers=self.headers if outcome >= 300 else {})


def _client(transport: httpx.BaseTransport, *, sleeps: list[float] | None = None,
            **kwargs: Any) -> MailtrapClient:
    options: dict[str, Any] = {"retry_initial": 0.001, "retry_max": 0.01, "max_retries": 3}
    if sleeps is not None:
        options["sleep"] = sleeps.append
    options.update(kwargs)
    return MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, account_id=1001,
                          transport=transport, **options)


@pytest.fixture
def client(double: MailtrapDouble) -> Iterator[MailtrapClient]:
    """A client on the double behind spec validation, with fast back-offs and 6 retries."""
    with _client(validating_transport(double), max_retries=6) as made:
        yield made


@pytest.mark.parametrize("status", [429, 408, 500, 502, 503, 504])
def test_retriable_statuses_are_retried_until_an_answer(status: int) -> None:
    """429, 408 and 5xx are retried; the call returns the answer that finally comes."""
    script = _Script(status, status, 200)
    with _client(httpx.MockTransport(script)) as client:
        assert client.lists() == []
    assert script.calls == 3


@pytest.mark.parametrize(("status", "error"), [
    (400, MailtrapError), (401, MailtrapAuthError), (403, MailtrapAuthError),
    (404, MailtrapNotFound), (409, MailtrapError), (422, MailtrapValidationError),
])
def test_other_4xx_are_not_retried(status: int, error: type[Exception]) -> None:
    """4xx other than 408 and 429 fail at once with their own error, after one request."""
    script = _Script(status)
    with _client(httpx.MockTransport(script)) as client, pytest.raises(error) as raised:
        client.lists()
    assert not isinstance(raised.value, MailtrapRetriable)
    assert script.calls == 1


def test_retry_budget_is_bounded() -> None:
    """A fault that never clears ends after max_retries + 1 requests with MailtrapRetriable."""
    script = _Script(500)
    with _client(httpx.MockTransport(script), max_retries=4) as client, \
            pytest.raises(MailtrapRetriable):
        client.lists()
    assert script.calls == 5


@pytest.mark.parametrize("fault", [
    httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("refused"),
    httpx.RemoteProtocolError("closed"), httpx.ReadError("reset"),
])
def test_timeouts_and_connection_errors_are_retried(fault: Exception) -> None:
    """Timeouts and dropped or refused connections are retried like a 5xx."""
    script = _Script(fault, fault, 200)
    with _client(httpx.MockTransport(script)) as client:
        assert client.lists() == []
    assert script.calls == 3


def test_faults_of_the_double_are_ridden_out(double: MailtrapDouble,
                                             client: MailtrapClient) -> None:
    """500s, 429s and connections dropped before or after the server acted are all retried."""
    double.force("500", "drop_before", "429", "drop_after")
    assert client.fields() == []
    assert [r.fault for r in double.requests()] == ["500", "drop_before", "429", "drop_after",
                                                    None]


def test_unsupported_url_scheme_is_a_config_error() -> None:
    """An api_url with a scheme httpx cannot speak is a configuration error, not retried."""
    with MailtrapClient(token="t", base_url="ftp://127.0.0.1:9", account_id=1) as client, \
            pytest.raises(ConfigError, match="api_url"):
        client.lists()


def test_backoff_is_exponential_with_jitter() -> None:
    """Waits double from retry_initial, each with up to 2 × retry_initial of jitter, capped."""
    sleeps: list[float] = []
    script = _Script(500)
    with _client(httpx.MockTransport(script), sleeps=sleeps, retry_initial=1.0,
                 retry_max=6.0, max_retries=5) as client, pytest.raises(MailtrapRetriable):
        client.lists()
    assert len(sleeps) == 5
    for attempt, waited in enumerate(sleeps):
        assert min(2.0**attempt, 6.0) <= waited <= min(2.0**attempt + 2.0, 6.0)


@pytest.mark.parametrize(("header", "expected"), [
    ("7", 7.0), ("http-date in 30 s", 30.0), ("86400", MAX_RETRY_AFTER),
])
def test_retry_after_is_honoured(header: str, expected: float) -> None:
    """A 429's Retry-After (seconds or HTTP date, capped) sets the wait, plus a little jitter."""
    if header.startswith("http-date"):
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    sleeps: list[float] = []
    script = _Script(429, 200, headers={"Retry-After": header})
    with _client(httpx.MockTransport(script), sleeps=sleeps, retry_initial=0.5) as client:
        assert client.lists() == []
    assert len(sleeps) == 1
    assert expected - 2.0 <= sleeps[0] <= expected + 1.0


def test_rate_limited_error_carries_retry_after() -> None:
    """With no retries left, a 429 surfaces as MailtrapRateLimited with its Retry-After."""
    script = _Script(429, headers={"Retry-After": "3"})
    with _client(httpx.MockTransport(script), max_retries=0) as client, \
            pytest.raises(MailtrapRateLimited) as raised:
        client.lists()
    assert raised.value.retry_after == 3.0


def test_422_names_each_refused_contact(double: MailtrapDouble, client: MailtrapClient) -> None:
    """A refused import is one request; its error maps each named email to Mailtrap's reasons."""
    double.faults.reject_emails = {"Bad@Example.com"}
    with pytest.raises(MailtrapValidationError) as raised:
        client.create_import([{"email": "ok@example.com"}, {"email": "Bad@Example.com"}])
    assert raised.value.contact_errors == {"bad@example.com": ["email: is invalid"]}
    assert len(double.requests()) == 1


@pytest.mark.parametrize("fault", ["drop_after", "drop_before", "500"])
def test_list_creation_is_idempotent(fault: str, double: MailtrapDouble,
                                     client: MailtrapClient) -> None:
    """A list create whose answer was lost is not repeated if Mailtrap had created the list."""
    double.force(fault)  # type: ignore[arg-type]
    created = client.create_list("Customers")
    assert double.lists() == {created.id: "Customers"}


def test_polling_survives_faults(double: MailtrapDouble, client: MailtrapClient) -> None:
    """Polling an import rides out 500s, 429s and dropped connections until it finishes."""
    double.import_policy = ImportPolicy(polls_to_finish=3)
    posted = client.create_import([{"email": "a@example.com"}])
    double.force("500", "drop_before", "429", "drop_after", "500")
    final = client.wait_for_import(posted.id, interval=0.001, max_interval=0.002)
    assert final is not None
    assert (final.status, final.created_contacts_count) == ("finished", 1)


def test_import_still_running_after_timeout_is_retriable(double: MailtrapDouble,
                                                         client: MailtrapClient) -> None:
    """An import not done within import_timeout raises MailtrapRetriable naming its status."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=3600)
    posted = client.create_import([{"email": "a@example.com"}])
    with pytest.raises(MailtrapRetriable, match="still started"):
        client.wait_for_import(posted.id, interval=0.01, timeout=0.05)


def test_stop_ends_polling_without_error(double: MailtrapDouble,
                                         client: MailtrapClient) -> None:
    """A stop request while an import runs ends the wait with None after the current poll."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=3600)
    posted = client.create_import([{"email": "a@example.com"}])
    with client.stoppable(lambda: True):
        assert client.wait_for_import(posted.id, interval=5.0) is None


def _in_thread(action: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_stop_cuts_a_retry_backoff_short() -> None:
    """A stop request during a long retry back-off raises MailtrapCancelled within moments."""
    stop = threading.Event()
    script = _Script(500)
    client = _client(httpx.MockTransport(script), retry_initial=30.0, retry_max=60.0,
                     sleep=time.sleep, on_response=lambda _group, _status: stop.set())

    def call() -> None:
        with client.stoppable(stop.is_set):
            client.lists()

    thread, errors = _in_thread(call)
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], MailtrapCancelled)
    assert script.calls == 1
    client.close()


def test_stop_cuts_a_pacing_wait_short(double: MailtrapDouble) -> None:
    """A request waiting for a pacing permit is given up on stop, and is never sent."""
    double.add_account(7_301, "Paced", token="paced-token")
    pacer = Pacer(token="paced-token", account_rate="1/60s", token_rate="150/10s")
    client = MailtrapClient(token="paced-token", base_url=BASE_URL, account_id=7_301,
                            transport=validating_transport(double), pacer=pacer)
    client.lists()  # takes the only permit of the next minute
    stop = threading.Event()

    def call() -> None:
        with client.stoppable(stop.is_set):
            client.lists()

    thread, errors = _in_thread(call)
    thread.join(timeout=0.3)
    assert thread.is_alive()  # blocked on the pacer, not sent
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [MailtrapCancelled]
    assert len(double.requests()) == 1
    client.close()
