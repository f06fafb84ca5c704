"""Spec validation: the double's answers conform, and ValidatingTransport catches violations."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support import openapi
from tests.support.double_fixtures import BASE_URL, CONTACTS, mailtrap_client
from tests.support.openapi import ValidatingTransport


def test_double_answers_validate_against_the_spec(
    double: MailtrapDouble, mailtrap_http: httpx.Client, mailtrap_transport: ValidatingTransport
) -> None:
    """A tour of every endpoint, successes and errors alike, passes spec validation both ways."""
    double.faults.reject_emails.add("no@example.com")
    list_id = mailtrap_http.post(f"{CONTACTS}/lists", json={"name": "L"}).json()["id"]
    field = {"name": "Age", "merge_tag": "age", "data_type": "integer"}
    field_id = mailtrap_http.post(f"{CONTACTS}/fields", json=field).json()["id"]
    calls = [
        ("GET", "/api/accounts", None),
        ("GET", f"{CONTACTS}/lists", None),
        ("GET", f"{CONTACTS}/lists/{list_id}", None),
        ("PATCH", f"{CONTACTS}/lists/{list_id}", {"name": "M"}),
        ("POST", f"{CONTACTS}/lists", {"name": ""}),
        ("GET", f"{CONTACTS}/fields", None),
        ("GET", f"{CONTACTS}/fields/{field_id}", None),
        ("PATCH", f"{CONTACTS}/fields/{field_id}", {"name": "Years"}),
        ("POST", f"{CONTACTS}/fields", field),
        (
            "POST",
            f"{CONTACTS}/imports",
            {
                "contacts": [
                    {"email": "a@example.com", "fields": {"age": 3}, "list_ids_included": [list_id]}
                ]
            },
        ),
        ("POST", f"{CONTACTS}/imports", {"contacts": [{"email": "no@example.com"}]}),
        ("POST", CONTACTS, {"contact": {"email": "b@example.com", "list_ids": [list_id]}}),
        ("GET", f"{CONTACTS}/b%40example.com", None),
        (
            "PATCH",
            f"{CONTACTS}/b%40example.com",
            {"contact": {"email": "b@example.com", "unsubscribed": True}},
        ),
        (
            "PATCH",
            f"{CONTACTS}/00000000-0000-4000-8000-000000000000",
            {"contact": {"email": "c@example.com"}},
        ),
        ("DELETE", f"{CONTACTS}/b%40example.com", None),
        ("DELETE", f"{CONTACTS}/b%40example.com", None),
        ("GET", f"{CONTACTS}/lists/999999", None),
        ("DELETE", f"{CONTACTS}/fields/{field_id}", None),
        ("DELETE", f"{CONTACTS}/lists/{list_id}", None),
    ]
    for method, path, body in calls:
        mailtrap_http.request(method, path, json=body)
    import_id = double.imports()[0].id
    for _ in range(2):
        mailtrap_http.get(f"{CONTACTS}/imports/{import_id}")
    double.force("500", "429")
    mailtrap_http.get(f"{CONTACTS}/lists")
    mailtrap_http.post(f"{CONTACTS}/imports", json={"contacts": [{"email": "x@example.com"}]})
    statuses = {c.status for c in mailtrap_transport.responses_checked}
    assert {200, 201, 204, 404, 422, 429, 500} <= statuses
    assert len(mailtrap_transport.requests_checked) == len(calls) + 6


def test_import_whose_contacts_is_not_an_array_is_refused(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """ValidatingTransport raises on a request that breaks the spec, before it is sent."""
    with pytest.raises(AssertionError, match=r"contacts.*is not of type 'array'"):
        mailtrap_http.post(f"{CONTACTS}/imports", json={"contacts": {"email": "a@example.com"}})
    assert double.requests() == []


def test_unauthenticated_request_is_refused() -> None:
    """A request with neither Bearer nor Api-Token breaks the spec's security requirement."""
    request = httpx.Request("GET", f"{BASE_URL}{CONTACTS}/lists")
    with pytest.raises(AssertionError, match="Security"):
        openapi.validate_request(request)


@pytest.mark.parametrize(
    "path", ["/api/contacts/lists", "/api/accounts/abc/contacts/lists", "/api/accounts/1/stats"]
)
def test_paths_outside_the_projects_surface_are_refused(path: str) -> None:
    """Only /api/accounts and /api/accounts/{integer}/contacts/... may be called."""
    request = httpx.Request("GET", f"{BASE_URL}{path}", headers={"Authorization": "Bearer t"})
    with pytest.raises(AssertionError):
        openapi.validate_request(request)


def _answering(status: int, body: object) -> ValidatingTransport:
    return ValidatingTransport(httpx.MockTransport(lambda _: httpx.Response(status, json=body)))


def test_response_breaking_the_spec_is_refused() -> None:
    """A response whose body or status the spec does not allow raises AssertionError."""
    wrong_body = mailtrap_client(_answering(201, {"id": "one", "status": "queued"}))
    with pytest.raises(AssertionError, match="breaks the Mailtrap spec"):
        wrong_body.post(f"{CONTACTS}/imports", json={"contacts": []})
    wrong_status = mailtrap_client(_answering(418, {}))
    with pytest.raises(AssertionError, match="status not in the Mailtrap spec"):
        wrong_status.get(f"{CONTACTS}/lists")


def test_undocumented_429_is_checked_against_the_rate_limit_schema() -> None:
    """A 429 on imports (documented on Mailtrap's rate-limits page) must still have its shape."""
    good = mailtrap_client(_answering(429, {"errors": "Rate limit exceeded"}))
    assert good.post(f"{CONTACTS}/imports", json={"contacts": []}).status_code == 429
    bad = mailtrap_client(_answering(429, {"errors": ["Rate limit exceeded"]}))
    with pytest.raises(AssertionError, match="RateLimitExceededResponse"):
        bad.post(f"{CONTACTS}/imports", json={"contacts": []})


def test_missing_specs_fail_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the spec files, spec_dir raises instead of letting tests skip validation."""
    monkeypatch.setenv(openapi.SPEC_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="specs not found"):
        openapi.spec_dir()


def test_specs_are_loaded_once() -> None:
    """load_specs is cached: openapi-core builds each spec once per session."""
    assert openapi.load_specs() is openapi.load_specs()


def test_a_passed_message_is_remembered_and_any_other_still_checked() -> None:
    """The same request or response again passes without a second validation; one byte else in
    the body, and a message that failed, are validated (and refused) every time."""
    headers = {"Authorization": "Bearer t"}
    good = httpx.Request("POST", f"{BASE_URL}{CONTACTS}/lists", json={"name": "A"},
                         headers=headers)
    first = openapi.validate_request(good)
    again = httpx.Request("POST", f"{BASE_URL}{CONTACTS}/lists", json={"name": "A"},
                          headers=headers)
    assert openapi.validate_request(again) is first
    bad = httpx.Request("POST", f"{BASE_URL}{CONTACTS}/lists", json={"name": 123},
                        headers=headers)  # as long as the good body: the same headers
    for _ in range(2):
        with pytest.raises(AssertionError, match="breaks the Mailtrap spec"):
            openapi.validate_request(bad)
    answer = httpx.Response(200, json={"id": 123, "name": "A"})
    assert openapi.validate_response(good, answer) is openapi.validate_response(good, answer)
    wrong = httpx.Response(200, json={"id": "1", "name": "A"})  # as long, too
    for _ in range(2):
        with pytest.raises(AssertionError, match="breaks the Mailtrap spec"):
            openapi.validate_response(good, wrong)
