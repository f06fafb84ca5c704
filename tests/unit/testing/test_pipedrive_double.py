"""The Pipedrive double answers as Pipedrive does: persons v2 paging, fields, recents, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.pipedrive import DEFAULT_TOKEN, PipedriveDouble

T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def pd() -> PipedriveDouble:
    return PipedriveDouble()


@pytest.fixture
def http(pd: PipedriveDouble) -> Iterator[httpx.Client]:
    with httpx.Client(transport=InProcessTransport(pd.app), base_url="https://api.pipedrive.com",
                      headers={"x-api-token": DEFAULT_TOKEN}) as client:
        yield client


def test_persons_by_update_time_with_cursor_paging(pd: PipedriveDouble,
                                                   http: httpx.Client) -> None:
    """updated_since is inclusive; next_cursor pages on and is null at the end; deleted
    persons are not listed; a person changed mid-read is neither skipped nor repeated early."""
    ids = [pd.add(first_name=f"P{n}", emails=[f"p{n}@x.io"], at=T0 + timedelta(seconds=n))
           for n in range(6)]
    pd.delete(ids[0])
    params = {"sort_by": "update_time", "limit": "2",
              "updated_since": "2026-06-01T00:00:01Z"}
    body = http.get("/api/v2/persons", params=params).json()
    seen = [p["id"] for p in body["data"]]
    pd.update(ids[1], first_name="moved")  # already read: comes again, at the end
    while body["additional_data"]["next_cursor"]:
        params["cursor"] = body["additional_data"]["next_cursor"]
        body = http.get("/api/v2/persons", params=params).json()
        seen += [p["id"] for p in body["data"]]
    assert seen == [*ids[1:], ids[1]]


def test_fields_recents_and_errors(pd: PipedriveDouble, http: httpx.Client) -> None:
    """personFields lists custom hashes; recents shows deletions; bad token 401, bad limit 400,
    forced 429 with Retry-After."""
    code = pd.add_custom_field("Plan tier")
    fields = http.get("/api/v2/personFields").json()["data"]
    assert {"field_code": code, "field_name": "Plan tier", "field_type": "varchar",
            "is_custom_field": True, "is_optional_response_field": False} in fields
    person = pd.add(first_name="A", emails=["a@x.io"], at=T0)
    pd.delete(person, at=T0 + timedelta(seconds=9))
    recents = http.get("/v1/recents", params={"since_timestamp": "2026-06-01 00:00:05",
                                              "items": "person"}).json()["data"]
    assert [(r["id"], r["data"]["active_flag"]) for r in recents] == [(person, False)]
    assert http.get("/api/v2/persons", headers={"x-api-token": "no"}).status_code == 401
    assert http.get("/api/v2/persons", params={"limit": "501"}).status_code == 400
    pd.rate_limit(1)
    limited = http.get("/api/v2/persons")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    assert limited.json()["error"] == "Request over limit"
