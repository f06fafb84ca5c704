"""Drift reconcile through the real job against the Mailtrap double (requests validated by the
spec): contacts deleted, edited or taken off a list in Mailtrap are found and restored by the next
sync; contacts unsubscribed in Mailtrap are recorded and never put back on a list."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from sync_service.models import RunOutcome
from sync_service.reconcile import reconcile
from sync_service.testing.mailtrap.double import FakeClock, MailtrapDouble
from tests.support.audience import T0, Audience
from tests.support.harness import Harness, Source, customers
from tests.support.openapi import ValidatingTransport


@pytest.fixture
def double() -> MailtrapDouble:
    """A double on a fake clock: each ``Audience.run`` is followed by a minute (fresh budget)."""
    return MailtrapDouble(clock=FakeClock())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def harness(double: MailtrapDouble, mailtrap_transport: ValidatingTransport, tmp_path: Any,
            request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The pipeline with its state store on SQLite, then on PostgreSQL."""
    state_url = request.getfixturevalue(f"{request.param.replace('postgresql', 'pg')}_url")
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    h = Harness(double, mailtrap_transport, source, state_url)
    yield h
    h.close()


def _drift(double: MailtrapDouble, lists: list[int]) -> None:
    """Behind the sync's back: 30 deleted, 20 edited, 5 unsubscribed and taken off both lists,
    5 taken off one list, 5 taken off both."""
    for i in range(1, 31):
        double.delete_contact(f"user{i}@example.com")
    for i in range(31, 51):
        double.edit_contact(f"user{i}@example.com", fields={"first_name": "Edited", "seats": 999})
    for i in range(51, 56):
        double.edit_contact(f"user{i}@example.com", remove_lists=lists, unsubscribed=True)
    for i in range(56, 61):
        double.edit_contact(f"user{i}@example.com", remove_lists=lists[1:])
    for i in range(61, 66):
        double.edit_contact(f"user{i}@example.com", remove_lists=lists)


def test_reconcile_then_sync_restores_drift(harness: Harness) -> None:
    """30 deleted + 20 edited (+ 10 off a list) come back; 5 unsubscribed stay off the lists."""
    harness.lists = ["Customers", "Newsletter"]
    audience = Audience(harness)
    harness.source.insert(range(1, 201))
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    expected = harness.source.expected()
    lists = sorted(harness.double.lists())
    _drift(harness.double, lists)
    result = reconcile(audience.job())
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert result.counts["missing"] == 35  # deleted, or on none of the pipeline's lists
    assert result.counts["differing"] == 20
    assert result.counts["outside_lists"] == 5
    assert result.counts["marked_changed"] == 60
    assert result.counts["unsubscribed_in_mailtrap"] == 5
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    held = harness.double.contacts()
    assert {e: dict(c.fields) for e, c in held.items()} == expected
    for i in range(1, 201):
        contact = held[f"user{i}@example.com"]
        assert (contact.list_ids == set(lists)) is not (51 <= i <= 55), i
        assert (contact.status == "unsubscribed") is (51 <= i <= 55)
    harness.source.update(range(51, 56), at=T0 + timedelta(hours=1), first_name="Later")
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    for i in range(51, 56):  # changed at the source: the update goes, the lists do not
        contact = harness.double.contact(f"user{i}@example.com")
        assert contact is not None
        assert (contact.fields["first_name"], contact.list_ids) == ("Later", frozenset())
    imports_before = len(harness.double.imports())
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    assert len(harness.double.imports()) == imports_before  # nothing left to repair
    again = reconcile(audience.job())
    assert again.counts.get("marked_changed", 0) == 0


def test_reconcile_reads_plain_csv_exports(harness: Harness) -> None:
    """An export served as plain CSV (not gzip) is read the same way."""
    audience = Audience(harness)
    harness.source.insert(range(1, 21))
    audience.run()
    harness.double.audience.gzip_exports = False
    harness.double.delete_contact("user3@example.com")
    result = reconcile(audience.job())
    assert result.counts["missing"] == 1
    audience.run()
    assert "user3@example.com" in harness.double.contacts()


def test_drifted_key_gone_from_the_source_is_not_recreated(harness: Harness) -> None:
    """A drifted key whose row was deleted from the source is not sent, nor fetched again."""
    audience = Audience(harness)
    harness.source.insert(range(1, 11))
    audience.run()
    harness.double.delete_contact("user4@example.com")
    harness.double.delete_contact("user5@example.com")
    assert reconcile(audience.job()).counts["missing"] == 2
    with harness.source.engine.begin() as conn:
        conn.execute(customers.delete().where(customers.c.id == 5))
    audience.run()
    held = harness.double.contacts()
    assert "user4@example.com" in held
    assert "user5@example.com" not in held
    assert harness.store.drifted_keys("customers") == []
