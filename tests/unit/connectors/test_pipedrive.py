"""The Pipedrive connector against the in-process Pipedrive double: settings, ordering of tied
persons, emails, custom fields and deletions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from sync_service.connectors.pipedrive import PipedriveConnector, PipedriveSettings, primary_email
from sync_service.errors import SourceError
from sync_service.models import Position
from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.pipedrive import DEFAULT_TOKEN, PipedriveDouble

T0 = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def pd() -> PipedriveDouble:
    return PipedriveDouble()


@pytest.fixture
def connect(pd: PipedriveDouble) -> Iterator[Any]:
    made: list[PipedriveConnector] = []

    def make(**overrides: Any) -> PipedriveConnector:
        values: dict[str, Any] = {"connector": "pipedrive", "token": DEFAULT_TOKEN,
                                  "page_size": 2, "rate": "1000/1s", **overrides}
        connector = PipedriveConnector(PipedriveSettings.model_validate(values),
                                       transport=InProcessTransport(pd.app),
                                       retry_initial=0.01)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


def test_settings_defaults_and_refusals() -> None:
    """api_url defaults to Pipedrive's; reserved or empty field names and page sizes over 500
    are refused."""
    settings = PipedriveSettings.model_validate({"connector": "pipedrive",
                                                 "token": "tok-5b9e1c"})
    assert settings.api_url == "https://api.pipedrive.com"
    assert "tok-5b9e1c" not in repr(settings)
    with pytest.raises(ValidationError, match="always read"):
        PipedriveSettings.model_validate({"connector": "pipedrive", "token": "t",
                                          "fields": ["email"]})
    with pytest.raises(ValidationError):
        PipedriveSettings.model_validate({"connector": "pipedrive", "token": "t",
                                          "page_size": 501})


def test_primary_email_rules() -> None:
    """The flagged primary wins; else the first address; empty values are skipped."""
    assert primary_email([{"value": "a@x.io", "primary": False},
                          {"value": "b@x.io", "primary": True}]) == "b@x.io"
    assert primary_email([{"value": "", "primary": True},
                          {"value": "c@x.io", "primary": False}]) == "c@x.io"
    assert primary_email([]) is None
    assert primary_email(None) is None


def test_tied_persons_are_yielded_by_id_whatever_the_api_order(pd: PipedriveDouble,
                                                               connect: Any) -> None:
    """Persons sharing an update_time, listed by descending id 2 a page, come out by id."""
    pd.ties_descending = True
    ids = [pd.add(first_name=f"P{n}", emails=[f"p{n}@example.com"], at=T0) for n in range(7)]
    later = pd.add(first_name="Later", emails=["later@example.com"],
                   at=T0 + timedelta(seconds=1))
    records = list(connect().read(None))
    assert [r.key for r in records] == [*ids, later]
    resumed = list(connect().read(records[3].position))
    assert [r.key for r in resumed] == [*ids[4:], later]


def test_set_and_enum_fields_give_labels(pd: PipedriveDouble, connect: Any) -> None:
    """Option fields are read as their labels; a set of options as labels joined by commas."""
    tier = pd.add_custom_field("Tier", "enum", ["Bronze", "Gold"])
    tags = pd.add_custom_field("Interests", "set", ["News", "Events", "Offers"])
    pd.add(first_name="A", emails=["a@example.com"], custom={tier: 2, tags: "1,3"}, at=T0)
    record = next(iter(connect(fields=["Tier", "interests"]).read(None)))
    assert record.values["Tier"] == "Gold"
    assert record.values["interests"] == "News, Offers"


def test_deletion_is_merged_in_order_with_changes(pd: PipedriveDouble, connect: Any) -> None:
    """A person deleted between two changes comes between them, deleted, with its address."""
    first = pd.add(first_name="A", emails=["a@example.com"], at=T0)
    second = pd.add(first_name="B", emails=["b@example.com"], at=T0)
    third = pd.add(first_name="C", emails=["c@example.com"], at=T0)
    pd.update(first, at=T0 + timedelta(seconds=10), first_name="A2")
    pd.delete(second, at=T0 + timedelta(seconds=20))
    pd.update(third, at=T0 + timedelta(seconds=30), first_name="C2")
    records = list(connect().read(Position(T0, third)))
    assert [(r.key, r.deleted, r.values["email"]) for r in records] == [
        (first, False, "a@example.com"), (second, True, "b@example.com"),
        (third, False, "c@example.com")]
    assert records[1].values["first_name"] is None  # every configured column is present
    assert not [r for r in connect(deletions=False).read(Position(T0, third)) if r.deleted]


def test_a_list_out_of_update_time_order_fails_the_read(pd: PipedriveDouble,
                                                        connect: Any) -> None:
    """A page that goes back in update_time is an API fault: SourceError, nothing skipped."""
    pd.add(first_name="A", emails=["a@example.com"], at=T0 + timedelta(seconds=5))
    pd.add(first_name="B", emails=["b@example.com"], at=T0)
    original = pd._list

    def unsorted(params: Any) -> dict[str, Any]:
        body = original(params)
        body["data"].sort(key=lambda p: p["id"])  # by id, ignoring sort_by
        return body

    pd._list = unsorted  # type: ignore[method-assign]
    with pytest.raises(SourceError, match="not in update_time order"):
        list(connect(page_size=5).read(None))


def test_lookback_rereads_the_window_to_catch_late_commits(pd: PipedriveDouble,
                                                          connect: Any) -> None:
    """A person stamped before the watermark but seen after it is read with a lookback."""
    seen = pd.add(first_name="S", emails=["s@example.com"], at=T0 + timedelta(seconds=5))
    watermark = Position(T0 + timedelta(seconds=5), seen)
    late = pd.add(first_name="L", emails=["l@example.com"], at=T0 + timedelta(seconds=3))
    assert list(connect().read(watermark)) == []
    assert [r.key for r in connect(lookback=5).read(watermark)] == [late, seen]


def test_requests_are_paced_under_the_configured_rate(pd: PipedriveDouble,
                                                      connect: Any) -> None:
    """With rate = "5/1s", no second of a long read sees more than five requests."""
    for n in range(14):
        pd.add(first_name=f"P{n}", emails=[f"p{n}@example.com"], at=T0 + timedelta(seconds=n))
    records = list(connect(page_size=1, rate="5/1s", fields=[]).read(None))
    assert len(records) == 14
    times = sorted(r.time for r in pd.requests())
    assert len(times) >= 15
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 5


def test_an_answer_without_success_fails_the_read(pd: PipedriveDouble, connect: Any) -> None:
    """A 200 whose body says success false, or a person without update_time, is a SourceError
    naming what was wrong."""
    pd.add(first_name="A", emails=["a@example.com"], at=T0)
    original = pd._list
    pd._list = lambda params: {"success": False, "data": None}  # type: ignore[method-assign]
    with pytest.raises(SourceError, match="did not answer success"):
        list(connect().read(None))
    pd._list = lambda params: {  # type: ignore[method-assign]
        "success": True, "data": [{"id": 1, "emails": []}], "additional_data": {}}
    with pytest.raises(SourceError, match="without id or update_time"):
        list(connect().read(None))
    pd._list = original  # type: ignore[method-assign]
    assert len(list(connect().read(None))) == 1
