"""The Mailtrap double's custom events and contact exports, every request and answer validated
against Mailtrap's spec."""

from __future__ import annotations

import gzip

import httpx

from sync_service.testing.mailtrap.double import MailtrapDouble
from sync_service.testing.mailtrap.transport import InProcessTransport
from tests.support.double_fixtures import CONTACTS


def test_event_for_a_contact_is_kept_and_echoed(double: MailtrapDouble,
                                                mailtrap_http: httpx.Client) -> None:
    """201 with the contact's id and email; the double keeps the event in order."""
    contact_id = double.add_contact("ann@example.com")
    answer = mailtrap_http.post(f"{CONTACTS}/ann%40example.com/events",
                                json={"name": "Login", "params": {"n": 1, "ok": True}})
    assert answer.status_code == 201
    assert answer.json()["contact_id"] == contact_id
    assert [(e.email, e.name, e.params) for e in double.events()] == [
        ("ann@example.com", "Login", {"n": 1, "ok": True})]


def test_event_refusals(double: MailtrapDouble, mailtrap_http: httpx.Client) -> None:
    """Unknown contact: 404; a blank name: 422 naming it; nothing is kept."""
    double.add_contact("ann@example.com")
    assert mailtrap_http.post(f"{CONTACTS}/bob%40example.com/events",
                              json={"name": "Login"}).status_code == 404
    refused = mailtrap_http.post(f"{CONTACTS}/ann%40example.com/events",
                                 json={"name": "  ", "params": {}})
    assert refused.status_code == 422
    assert "name" in refused.json()["errors"]
    assert double.events() == []


def test_export_moves_on_and_serves_its_file(double: MailtrapDouble,
                                             mailtrap_http: httpx.Client) -> None:
    """created → started → finished with a URL; one export at a time; the file is gzip CSV of
    the contacts on the filtered list."""
    customers = double.add_list("Customers")
    double.add_field("first_name")
    double.add_contact("ann@example.com", fields={"first_name": "Ann"}, list_ids=[customers])
    double.add_contact("bob@example.com")
    body = {"filters": [{"name": "list_id", "operator": "equal", "value": [customers]}]}
    created = mailtrap_http.post(f"{CONTACTS}/exports", json=body)
    assert (created.status_code, created.json()["status"]) == (201, "created")
    assert mailtrap_http.post(f"{CONTACTS}/exports", json=body).status_code == 422
    export_id = created.json()["id"]
    polls = [mailtrap_http.get(f"{CONTACTS}/exports/{export_id}").json() for _ in range(2)]
    assert [p["status"] for p in polls] == ["started", "finished"]
    assert mailtrap_http.get(f"{CONTACTS}/exports/999999").status_code == 404
    with httpx.Client(transport=InProcessTransport(double.app)) as files:
        content = files.get(polls[1]["url"]).content
    lines = gzip.decompress(content).decode().splitlines()
    assert lines[0] == "id,email,status,list_ids,created_at,updated_at,first_name"
    assert [line.split(",")[1:4] + line.split(",")[-1:] for line in lines[1:]] == [
        ["ann@example.com", "subscribed", str(customers), "Ann"]]
