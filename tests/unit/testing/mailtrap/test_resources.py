"""The double's accounts, lists, fields and single contacts, through HTTP."""

from __future__ import annotations

import httpx

from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.double_fixtures import CONTACTS


def test_accounts_lists_what_the_token_sees(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """GET /api/accounts answers id, name and access_levels of the token's accounts only."""
    double.add_account(2002, "Second", token="test-token", access_level=100)
    double.add_account(3003, "Hidden", token="other-token")
    assert mailtrap_http.get("/api/accounts").json() == [
        {"id": 1001, "name": "Demo", "access_levels": [1000]},
        {"id": 2002, "name": "Second", "access_levels": [100]},
    ]


def test_list_crud(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """Lists: POST answers 200 (per spec), GET/PATCH by id, DELETE 204 then 404."""
    created = mailtrap_http.post(f"{CONTACTS}/lists", json={"name": "Customers"})
    assert created.status_code == 200
    list_id = created.json()["id"]
    assert mailtrap_http.get(f"{CONTACTS}/lists").json() == [{"id": list_id, "name": "Customers"}]
    renamed = mailtrap_http.patch(f"{CONTACTS}/lists/{list_id}", json={"name": "Buyers"})
    assert renamed.json() == {"id": list_id, "name": "Buyers"}
    assert mailtrap_http.delete(f"{CONTACTS}/lists/{list_id}").status_code == 204
    missing = mailtrap_http.get(f"{CONTACTS}/lists/{list_id}")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})
    assert double.lists() == {}


def test_deleting_a_list_takes_it_off_contacts(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """A deleted list disappears from every contact's list_ids."""
    list_id = double.add_list("gone")
    double.add_contact("a@example.com", list_ids=[list_id])
    mailtrap_http.delete(f"{CONTACTS}/lists/{list_id}")
    contact = double.contact("a@example.com")
    assert contact is not None
    assert contact.list_ids == frozenset()


def test_field_crud(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """Fields: POST 201 with id, GET, PATCH name/merge_tag, DELETE 204 then 404."""
    body = {"name": "First name", "merge_tag": "first_name", "data_type": "text"}
    created = mailtrap_http.post(f"{CONTACTS}/fields", json=body)
    assert created.status_code == 201
    field_id = created.json()["id"]
    assert created.json() == {"id": field_id, **body}
    patched = mailtrap_http.patch(f"{CONTACTS}/fields/{field_id}", json={"merge_tag": "fname"})
    assert patched.json()["merge_tag"] == "fname"
    assert set(double.fields()) == {"fname"}
    assert mailtrap_http.delete(f"{CONTACTS}/fields/{field_id}").status_code == 204
    assert mailtrap_http.get(f"{CONTACTS}/fields/{field_id}").status_code == 404


def test_field_limit_is_40(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """The 41st field of an account answers 422."""
    for i in range(40):
        double.add_field(f"f{i}")
    response = mailtrap_http.post(
        f"{CONTACTS}/fields", json={"name": "one more", "merge_tag": "f40", "data_type": "text"}
    )
    assert response.status_code == 422
    assert response.json() == {"errors": {"base": ["cannot have more than 40 fields"]}}


def test_field_name_and_merge_tag_are_unique(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """A taken name or merge tag answers 422 'has already been taken' for each."""
    double.add_field("company", name="Company")
    response = mailtrap_http.post(
        f"{CONTACTS}/fields", json={"name": "Company", "merge_tag": "company", "data_type": "text"}
    )
    assert response.status_code == 422
    assert response.json() == {
        "errors": {"name": ["has already been taken"], "merge_tag": ["has already been taken"]}
    }


def test_field_data_type_is_checked_and_fixed(
    double: MailtrapDouble, raw_http: httpx.Client
) -> None:
    """An unknown data_type is refused; changing data_type on PATCH is refused."""
    bad = raw_http.post(
        f"{CONTACTS}/fields", json={"name": "n", "merge_tag": "n", "data_type": "decimal"}
    )
    assert (bad.status_code, bad.json()) == (
        422,
        {"errors": {"data_type": ["is not included in the list"]}},
    )
    field_id = double.add_field("age", "integer")
    changed = raw_http.patch(f"{CONTACTS}/fields/{field_id}", json={"data_type": "text"})
    assert (changed.status_code, changed.json()) == (
        422,
        {"errors": {"data_type": ["cannot be changed"]}},
    )


def test_contact_create_get_by_email_and_id(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """POST contacts answers 201 {data}; GET works by URL-encoded email and by id."""
    list_id = double.add_list("l")
    created = mailtrap_http.post(
        CONTACTS, json={"contact": {"email": "Ann+x@example.com", "list_ids": [list_id]}}
    )
    assert created.status_code == 201
    data = created.json()["data"]
    assert (data["email"], data["list_ids"], data["status"]) == (
        "Ann+x@example.com",
        [list_id],
        "subscribed",
    )
    by_email = mailtrap_http.get(f"{CONTACTS}/ann%2Bx%40example.com")
    by_id = mailtrap_http.get(f"{CONTACTS}/{data['id']}")
    assert by_email.json() == by_id.json() == {"data": data}
    again = mailtrap_http.post(CONTACTS, json={"contact": {"email": "ann+x@example.com"}})
    assert (again.status_code, again.json()) == (
        422,
        {"errors": {"email": ["has already been taken"]}},
    )


def test_patch_unsubscribes_and_updates(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """PATCH with unsubscribed: true sets status unsubscribed; fields and lists apply."""
    double.add_field("plan")
    old, new = double.add_list("old"), double.add_list("new")
    double.add_contact("ann@example.com", list_ids=[old])
    response = mailtrap_http.patch(
        f"{CONTACTS}/ann%40example.com",
        json={
            "contact": {
                "email": "ann@example.com",
                "fields": {"plan": "pro"},
                "list_ids_included": [new],
                "list_ids_excluded": [old],
                "unsubscribed": True,
            }
        },
    )
    assert response.status_code == 200
    assert response.json()["action"] == "updated"
    assert response.json()["data"]["status"] == "unsubscribed"
    contact = double.contact("ann@example.com")
    assert contact is not None
    assert (contact.status, dict(contact.fields), contact.list_ids) == (
        "unsubscribed",
        {"plan": "pro"},
        frozenset({new}),
    )


def test_patch_false_does_not_resubscribe(
    double: MailtrapDouble, mailtrap_http: httpx.Client
) -> None:
    """unsubscribed: false leaves an unsubscribed contact unsubscribed."""
    double.add_contact("ann@example.com", unsubscribed=True)
    mailtrap_http.patch(
        f"{CONTACTS}/ann%40example.com",
        json={"contact": {"email": "ann@example.com", "unsubscribed": False}},
    )
    contact = double.contact("ann@example.com")
    assert contact is not None
    assert contact.status == "unsubscribed"


def test_patch_unknown_email_creates(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """PATCH on an unknown email creates the contact and answers action 'created'."""
    response = mailtrap_http.patch(
        f"{CONTACTS}/new%40example.com", json={"contact": {"email": "new@example.com"}}
    )
    assert response.json()["action"] == "created"
    assert set(double.contacts()) == {"new@example.com"}


def test_patch_invalid_body_is_unprocessable(mailtrap_http: httpx.Client) -> None:
    """PATCH with a bad email answers 422 in the UnprocessableEntity shape."""
    response = mailtrap_http.patch(
        f"{CONTACTS}/x%40example.com", json={"contact": {"email": "nope"}}
    )
    assert (response.status_code, response.json()) == (422, {"errors": {"email": ["is invalid"]}})


def test_delete_contact_then_missing(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """DELETE answers 204, then 404 {"errors": "Contact(s) not found"}."""
    double.add_contact("ann@example.com")
    assert mailtrap_http.delete(f"{CONTACTS}/ann%40example.com").status_code == 204
    missing = mailtrap_http.delete(f"{CONTACTS}/ann%40example.com")
    assert (missing.status_code, missing.json()) == (404, {"errors": "Contact(s) not found"})
    assert mailtrap_http.get(f"{CONTACTS}/ann%40example.com").status_code == 404


def test_unknown_route_is_not_found(raw_http: httpx.Client) -> None:
    """A path the double does not serve answers 404 {"error": "Not Found"}."""
    response = raw_http.get("/api/nothing/here")
    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})
