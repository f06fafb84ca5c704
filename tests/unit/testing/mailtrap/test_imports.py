"""The double's bulk imports: lifecycle, application to contacts, and every 422."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sync_service.testing.mailtrap.double import FakeClock, ImportPolicy, MailtrapDouble
from tests.support.double_fixtures import CONTACTS
from tests.unit.testing.mailtrap.conftest import ClientFactory


def _post(http: httpx.Client, *contacts: dict[str, Any]) -> httpx.Response:
    return http.post(f"{CONTACTS}/imports", json={"contacts": list(contacts)})


def _poll(http: httpx.Client, import_id: int) -> dict[str, Any]:
    response = http.get(f"{CONTACTS}/imports/{import_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _run(http: httpx.Client, *contacts: dict[str, Any]) -> dict[str, Any]:
    posted = _post(http, *contacts)
    assert posted.status_code == 201, posted.text
    while (status := _poll(http, posted.json()["id"]))["status"] not in ("finished", "failed"):
        pass
    return status


def _only_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert isinstance(errors, list)
    assert len(errors) == 1
    entry: dict[str, Any] = errors[0]
    return entry


def test_import_moves_created_started_finished(mailtrap_http: httpx.Client) -> None:
    """POST answers 201 created; the 1st poll says started, the 2nd finished with the counts."""
    posted = _post(mailtrap_http, {"email": "ann@example.com"})
    assert posted.status_code == 201
    assert posted.json() == {"id": posted.json()["id"], "status": "created"}
    import_id = posted.json()["id"]
    assert _poll(mailtrap_http, import_id) == {"id": import_id, "status": "started"}
    assert _poll(mailtrap_http, import_id) == {
        "id": import_id,
        "status": "finished",
        "created_contacts_count": 1,
        "updated_contacts_count": 0,
        "contacts_over_limit_count": 0,
    }


def test_import_is_applied_only_when_finished(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """Nothing of an import is visible until it finishes, then all of it at once."""
    import_id = _post(mailtrap_http, {"email": "a@example.com"}, {"email": "b@example.com"}).json()[
        "id"
    ]
    assert double.contacts() == {}
    _poll(mailtrap_http, import_id)
    assert double.contacts() == {}
    _poll(mailtrap_http, import_id)
    assert set(double.contacts()) == {"a@example.com", "b@example.com"}


def test_import_upserts_by_email_merging_fields_and_lists(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """Existing contacts (matched case-insensitively) get fields merged, lists added and removed."""
    double.add_field("first_name")
    double.add_field("age", "integer")
    keep, drop, add = double.add_list("keep"), double.add_list("drop"), double.add_list("add")
    double.add_contact(
        "Ann@Example.com", fields={"first_name": "Ann", "age": 30}, list_ids=[keep, drop]
    )
    status = _run(
        mailtrap_http,
        {
            "email": "ann@example.COM",
            "fields": {"age": 31},
            "list_ids_included": [add],
            "list_ids_excluded": [drop],
        },
    )
    assert (status["created_contacts_count"], status["updated_contacts_count"]) == (0, 1)
    ann = double.contact("ann@example.com")
    assert ann is not None
    assert dict(ann.fields) == {"first_name": "Ann", "age": 31}
    assert ann.list_ids == {keep, add}
    assert ann.email == "Ann@Example.com"


def test_null_field_value_clears_the_field(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """A null in an import's fields removes that field from the contact."""
    double.add_field("nickname")
    double.add_contact("ann@example.com", fields={"nickname": "A"})
    _run(mailtrap_http, {"email": "ann@example.com", "fields": {"nickname": None}})
    contact = double.contact("ann@example.com")
    assert contact is not None
    assert dict(contact.fields) == {}


def test_contacts_over_the_quota_are_counted_not_stored(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """With max_contacts, new contacts beyond it go to contacts_over_limit_count; updates pass."""
    double.max_contacts = 2
    double.add_contact("old@example.com")
    status = _run(
        mailtrap_http,
        {"email": "old@example.com"},
        {"email": "new1@example.com"},
        {"email": "new2@example.com"},
    )
    assert (
        status["created_contacts_count"],
        status["updated_contacts_count"],
        status["contacts_over_limit_count"],
    ) == (1, 1, 1)
    assert set(double.contacts()) == {"old@example.com", "new1@example.com"}


def test_failed_import_applies_nothing(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """With import_failure_rate 1 an import ends failed, without counts, and changes nothing."""
    double.faults.import_failure_rate = 1.0
    status = _run(mailtrap_http, {"email": "ann@example.com"})
    assert status == {"id": status["id"], "status": "failed"}
    assert double.contacts() == {}


def test_slow_import_needs_more_polls(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """ImportPolicy(polls_to_finish=4) keeps an import started until the 4th poll."""
    double.import_policy = ImportPolicy(polls_to_finish=4)
    import_id = _post(mailtrap_http, {"email": "ann@example.com"}).json()["id"]
    statuses = [_poll(mailtrap_http, import_id)["status"] for _ in range(4)]
    assert statuses == ["started", "started", "started", "finished"]


def test_timed_import_finishes_by_the_clock_even_unpolled(
    clock: FakeClock, client_for: ClientFactory
) -> None:
    """A time-only policy finishes an import once its seconds have passed, polled or not."""
    double = MailtrapDouble(clock=clock, import_policy=ImportPolicy(None, 5.0))
    http = client_for(double)
    import_id = _post(http, {"email": "ann@example.com"}).json()["id"]
    assert _poll(http, import_id)["status"] == "started"
    clock.advance(5.0)
    assert set(double.contacts()) == {"ann@example.com"}
    assert double.imports()[0].status == "finished"


def test_imports_are_inspectable_with_their_contacts(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """double.imports() shows each import's status, polls and the contacts it carried."""
    _post(mailtrap_http, {"email": "a@example.com"}, {"email": "b@example.com"})
    [job] = double.imports()
    assert (job.status, job.polls, job.emails) == ("created", 0, ["a@example.com", "b@example.com"])
    double.finish_imports()
    assert double.imports()[0].status == "finished"


def test_more_than_50000_contacts_is_a_base_error(raw_http: httpx.Client) -> None:
    """50,001 contacts reject the request with base 'cannot import more than 50000'."""
    contacts = [{"email": f"c{i}@example.com"} for i in range(50_001)]
    entry = _only_error(raw_http.post(f"{CONTACTS}/imports", json={"contacts": contacts}))
    assert entry["errors"] == {"base": ["cannot import more than 50000 contacts at once"]}


@pytest.mark.parametrize("email", ["not-an-email", "ann@", "ann@@example.com", "ann@localhost", ""])
def test_invalid_email_is_an_email_error(
    double: MailtrapDouble, mailtrap_http: httpx.Client, email: str
) -> None:
    """An invalid email rejects the whole import (the good contact is not applied either)."""
    response = _post(mailtrap_http, {"email": "good@example.com"}, {"email": email})
    entry = _only_error(response)
    assert entry["email"] == email
    assert list(entry["errors"]) == ["email"]
    assert double.imports() == []


def test_unknown_merge_tag_is_a_field_merge_tag_error(mailtrap_http: httpx.Client) -> None:
    """A merge tag the account lacks answers field_merge_tag 'is invalid'."""
    entry = _only_error(_post(mailtrap_http, {"email": "a@example.com", "fields": {"nope": 1}}))
    assert entry == {"email": "a@example.com", "errors": {"field_merge_tag": ["is invalid: nope"]}}


@pytest.mark.parametrize(
    ("data_type", "good", "bad"),
    [
        ("text", "x" * 255, "x" * 256),
        ("text", "ok", 5),
        ("integer", 7, 7.5),
        ("integer", -3, "7"),
        ("float", 1.5, "1.5"),
        ("float", 2, True),
        ("boolean", False, "false"),
        ("date", "2024-02-29", "2023-02-29"),
        ("date", "1999-12-31", "31/12/1999"),
    ],
)
def test_value_must_fit_the_field_data_type(
    double: MailtrapDouble, mailtrap_http: httpx.Client, data_type: str, good: Any, bad: Any
) -> None:
    """Values are typed by the field: text ≤ 255, integer, float, boolean, yyyy-mm-dd date."""
    double.add_field("f", data_type)
    assert (
        _post(mailtrap_http, {"email": "a@example.com", "fields": {"f": good}}).status_code == 201
    )
    entry = _only_error(_post(mailtrap_http, {"email": "a@example.com", "fields": {"f": bad}}))
    assert entry["errors"] == {"fields": ["contains invalid values: f"]}


def test_unknown_list_id_is_a_base_error(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """A list id the account lacks, included or excluded, rejects the import."""
    entry = _only_error(
        _post(mailtrap_http, {"email": "a@example.com", "list_ids_excluded": [999]})
    )
    assert entry["errors"] == {"base": ["list_ids 999 do not exist"]}


def test_list_both_included_and_excluded_is_a_base_error(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """The same list id included and excluded answers the spec's 'same list_ids' base error."""
    one = double.add_list("one")
    response = _post(
        mailtrap_http,
        {"email": "a@example.com", "list_ids_included": [one], "list_ids_excluded": [one]},
    )
    assert _only_error(response)["errors"] == {
        "base": [f"same list_ids {one} are specified both as included and excluded"]
    }


def test_duplicate_email_in_one_import_is_rejected(mailtrap_http: httpx.Client) -> None:
    """The same email twice (any case) in one import rejects it, naming the repeat."""
    entry = _only_error(
        _post(mailtrap_http, {"email": "a@example.com"}, {"email": "A@EXAMPLE.com"})
    )
    assert entry == {
        "email": "A@EXAMPLE.com",
        "errors": {"base": ["email appears more than once in this import"]},
    }


def test_refused_emails_always_get_a_422(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """faults.reject_emails makes an otherwise valid address fail with 'is invalid'."""
    double.faults.reject_emails.add("Bounce@example.com")
    entry = _only_error(
        _post(mailtrap_http, {"email": "a@example.com"}, {"email": "bounce@example.com"})
    )
    assert entry == {"email": "bounce@example.com", "errors": {"email": ["is invalid"]}}


def test_import_cannot_unsubscribe(mailtrap_http: httpx.Client) -> None:
    """An imported contact carrying 'unsubscribed' is rejected: imports cannot unsubscribe."""
    entry = _only_error(_post(mailtrap_http, {"email": "a@example.com", "unsubscribed": True}))
    assert entry["errors"] == {"base": ["unknown attributes: unsubscribed"]}


def test_every_bad_contact_gets_its_own_entry(mailtrap_http: httpx.Client) -> None:
    """A 422 lists one entry per bad contact, with all of that contact's errors."""
    response = _post(
        mailtrap_http,
        {"email": "bad", "fields": {"x": 1}},
        {"email": "ok@example.com"},
        {"email": "also bad"},
    )
    assert response.status_code == 422
    assert response.json() == {
        "errors": [
            {
                "email": "bad",
                "errors": {"email": ["is invalid"], "field_merge_tag": ["is invalid: x"]},
            },
            {"email": "also bad", "errors": {"email": ["is invalid"]}},
        ]
    }


def test_import_of_another_account_is_not_found(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """Polling an import id from another account (or none) answers 404 Not Found."""
    double.add_account(2002, "Other", token="test-token")
    import_id = _post(mailtrap_http, {"email": "a@example.com"}).json()["id"]
    response = mailtrap_http.get(f"/api/accounts/2002/contacts/imports/{import_id}")
    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})
