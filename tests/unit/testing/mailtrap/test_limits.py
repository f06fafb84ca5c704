"""The double's auth, rate limits, fault injection and request log."""

from __future__ import annotations

import collections

import httpx
import pytest

from sync_service.testing.mailtrap.double import DropError, FakeClock, MailtrapDouble, RateLimits
from tests.support.double_fixtures import CONTACTS
from tests.unit.testing.mailtrap.conftest import ClientFactory

_NO_LIMITS = RateLimits(account_requests=None, token_requests=None)


def test_wrong_or_missing_token_is_401(double: MailtrapDouble, client_for: ClientFactory) -> None:
    """A wrong token, or none, answers 401 {"error": "Incorrect API token"}."""
    wrong = client_for(double, token="nope").get(f"{CONTACTS}/lists")
    bare = client_for(double, validate=False)
    bare.headers.pop("Authorization")
    missing = bare.get(f"{CONTACTS}/lists")
    for response in (wrong, missing):
        assert (response.status_code, response.json()) == (401, {"error": "Incorrect API token"})


def test_api_token_header_is_accepted(double: MailtrapDouble, client_for: ClientFactory) -> None:
    """The Api-Token header authenticates like a Bearer token."""
    http = client_for(double)
    http.headers.pop("Authorization")
    http.headers["Api-Token"] = "test-token"
    assert http.get(f"{CONTACTS}/lists").status_code == 200


def test_account_the_token_cannot_see_is_403(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """Another account, or one that does not exist, answers 403 Account access forbidden."""
    double.add_account(2002, "Other", token="other-token")
    for account in (2002, 9999):
        response = mailtrap_http.get(f"/api/accounts/{account}/contacts/lists")
        assert (response.status_code, response.json()) == (
            403,
            {"errors": "Account access forbidden"},
        )


def test_viewer_token_cannot_write(double: MailtrapDouble, client_for: ClientFactory) -> None:
    """A token with viewer access (10) may read but not write: 403."""
    double.grant("viewer", 1001, access_level=10)
    http = client_for(double, token="viewer")
    assert http.get(f"{CONTACTS}/lists").status_code == 200
    assert http.post(f"{CONTACTS}/lists", json={"name": "x"}).status_code == 403


def test_201st_contacts_request_in_60s_is_429(clock: FakeClock, client_for: ClientFactory) -> None:
    """200 contacts requests per account per 60 s pass; the 201st is 429 until the window moves."""
    double = MailtrapDouble(clock=clock)
    http = client_for(double, validate=False)
    for _ in range(200):
        assert http.get(f"{CONTACTS}/lists").status_code == 200
        clock.advance(0.1)  # 200 requests in 20 s: under the token limit of 150 / 10 s
    over = http.get(f"{CONTACTS}/lists")
    assert (over.status_code, over.json()) == (429, {"errors": "Rate limit exceeded"})
    assert "retry-after" not in over.headers
    assert not any(h.startswith("x-ratelimit") for h in over.headers)
    clock.advance(40.0)  # the first requests leave the 60 s window
    assert http.get(f"{CONTACTS}/lists").status_code == 200


def test_151st_token_request_in_10s_is_429(clock: FakeClock, client_for: ClientFactory) -> None:
    """150 requests per token per 10 s pass (any endpoint); the 151st is 429; other tokens pass."""
    double = MailtrapDouble(clock=clock)
    double.grant("second-token", 1001)
    http = client_for(double, validate=False)
    for i in range(150):
        path = "/api/accounts" if i % 2 else f"{CONTACTS}/lists"
        assert http.get(path).status_code == 200
    assert http.get("/api/accounts").status_code == 429
    assert (
        client_for(double, validate=False, token="second-token").get("/api/accounts").status_code
        == 200
    )
    clock.advance(10.0)
    assert http.get("/api/accounts").status_code == 200


def test_forced_429_burst(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """force_429(n) makes exactly the next n requests answer 429."""
    double.force_429(3)
    statuses = [mailtrap_http.get(f"{CONTACTS}/lists").status_code for _ in range(5)]
    assert statuses == [429, 429, 429, 200, 200]


def _statuses(double: MailtrapDouble, client_for: ClientFactory, count: int) -> list[str]:
    http = client_for(double, validate=False)
    outcomes = []
    for _ in range(count):
        try:
            outcomes.append(str(http.get(f"{CONTACTS}/lists").status_code))
        except httpx.TransportError as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def test_faults_fire_at_their_rates_repeatably(client_for: ClientFactory) -> None:
    """With a seed, 500s and drops come at about their rates, and the same seed repeats them."""
    runs = []
    for _ in range(2):
        double = MailtrapDouble(seed=42, rate_limits=_NO_LIMITS)
        double.faults.error_rate, double.faults.drop_rate = 0.2, 0.1
        runs.append(_statuses(double, client_for, 500))
    assert runs[0] == runs[1]
    counts = collections.Counter(runs[0])
    assert 70 <= counts["500"] <= 130
    drops = counts["RemoteProtocolError"] + counts["ReadError"]
    assert 30 <= drops <= 70
    assert counts["RemoteProtocolError"] > 0
    assert counts["ReadError"] > 0


def test_import_failure_rate(client_for: ClientFactory) -> None:
    """import_failure_rate 0.5 fails about half the imports."""
    double = MailtrapDouble(seed=3, rate_limits=_NO_LIMITS)
    double.faults.import_failure_rate = 0.5
    http = client_for(double, validate=False)
    for i in range(100):
        http.post(f"{CONTACTS}/imports", json={"contacts": [{"email": f"a{i}@example.com"}]})
    double.clear_requests()
    for job in double.imports():
        for _ in range(2):
            http.get(f"{CONTACTS}/imports/{job.id}")
    failed = sum(job.status == "failed" for job in double.imports())
    assert 35 <= failed <= 65


@pytest.mark.parametrize("error", ["remote_protocol", "read"])
def test_drop_before_applying(
    double: MailtrapDouble, mailtrap_http: httpx.Client, error: DropError
) -> None:
    """A drop_before fault raises the chosen transport error and changes nothing."""
    double.faults.drop_error = error
    double.force("drop_before")
    expected = httpx.RemoteProtocolError if error == "remote_protocol" else httpx.ReadError
    with pytest.raises(expected):
        mailtrap_http.post(f"{CONTACTS}/lists", json={"name": "lost"})
    assert double.lists() == {}
    assert double.requests()[-1].status is None


def test_drop_after_applying(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """A drop_after fault carries the request out, then drops the connection."""
    double.force("drop_after")
    with pytest.raises(httpx.TransportError):
        mailtrap_http.post(f"{CONTACTS}/imports", json={"contacts": [{"email": "a@example.com"}]})
    assert [job.emails for job in double.imports()] == [["a@example.com"]]
    assert double.requests()[-1].fault == "drop_after"


def test_request_log_records_what_came(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """The log holds method, path, status, token, account and parsed body of each request."""
    mailtrap_http.post(f"{CONTACTS}/lists", json={"name": "L"})
    mailtrap_http.get("/api/accounts")
    first, second = double.requests()
    assert (first.method, first.path, first.status, first.token, first.account_id, first.body) == (
        "POST",
        f"{CONTACTS}/lists",
        200,
        "test-token",
        1001,
        {"name": "L"},
    )
    assert (second.account_id, second.is_write, second.is_contacts) == (None, False, False)
    assert [r for r in double.requests() if r.is_write] == [first]


def test_max_requests_in_window(clock: FakeClock, client_for: ClientFactory) -> None:
    """max_requests_in_window finds the busiest window of the log."""
    double = MailtrapDouble(clock=clock)
    http = client_for(double, validate=False)
    for gap in (0, 1, 1, 5, 1, 1, 1):
        clock.advance(gap)
        http.get(f"{CONTACTS}/lists")
    assert double.max_requests_in_window(3.0) == 3
    assert double.max_requests_in_window(3.5, contacts_only=True, account_id=1001) == 4
    assert double.max_requests_in_window(100.0, token="someone-else") == 0
