"""Opt-outs through the real job against the Mailtrap double (requests validated by the spec):
unsubscribed once, never re-subscribed, created and unsubscribed in one run, skipped on request,
and a crash between the PATCH and its record repeats it at most once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sync_service.models import RunOutcome
from sync_service.testing.mailtrap.double import FakeClock, MailtrapDouble
from tests.support.audience import T0, Audience
from tests.support.harness import Harness, Source
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


def _unsubscribes(audience: Audience) -> list[str]:
    return [b["contact"]["email"] for b in audience.patches()
            if b["contact"].get("unsubscribed") is True]


def test_opted_out_rows_are_unsubscribed_once(harness: Harness) -> None:
    """100 opted-out rows: created and unsubscribed in the first run, one PATCH each, no more."""
    audience = Audience(harness, consent={"unsubscribed": "opted_out"})
    harness.source.insert(range(1, 301))
    audience.opt(range(1, 101), 1, at=T0)
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    sent = _unsubscribes(audience)
    assert sorted(sent) == sorted(f"user{i}@example.com" for i in range(1, 101))
    held = harness.double.contacts()
    assert all(held[f"user{i}@example.com"].status == "unsubscribed" for i in range(1, 101))
    assert all(held[f"user{i}@example.com"].status == "subscribed" for i in range(101, 301))
    assert all(not held[f"user{i}@example.com"].list_ids for i in range(1, 101))  # on no list
    assert all(held[f"user{i}@example.com"].list_ids for i in range(101, 301))
    first_patch = next(i for i, r in enumerate(harness.double.requests()) if r.method == "PATCH")
    assert any(r.path.endswith("/imports") for r in harness.double.requests()[:first_patch])
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    assert len(audience.patches()) == 100
    assert harness.store.audience_counts("customers")["opted_out"] == 100


def test_clearing_the_flag_never_resubscribes(harness: Harness) -> None:
    """Clearing the opt-out at the source (false or NULL) sends nothing that re-subscribes."""
    audience = Audience(harness, consent={"unsubscribed": "opted_out"})
    harness.source.insert(range(1, 21))
    audience.opt(range(1, 11), 1, at=T0)
    audience.run()
    audience.opt(range(1, 6), 0, at=T0 + timedelta(hours=1))
    audience.opt(range(6, 11), None, at=T0 + timedelta(hours=1))
    harness.source.update(range(1, 11), at=T0 + timedelta(hours=2), first_name="Renamed")
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    assert len(audience.patches()) == 10
    assert not any(b["contact"].get("unsubscribed") is False for b in audience.patches())
    held = harness.double.contacts()
    assert all(held[f"user{i}@example.com"].status == "unsubscribed" for i in range(1, 11))
    assert held["user1@example.com"].fields["first_name"] == "Renamed"


def test_skip_never_creates_an_opted_out_contact(harness: Harness) -> None:
    """on_opt_out = "skip": a new opted-out row is never created; a known one is unsubscribed."""
    audience = Audience(harness, consent={"unsubscribed": "opted_out", "on_opt_out": "skip"})
    harness.source.insert(range(1, 21))
    audience.opt(range(1, 6), 1, at=T0)
    audience.run()
    held = harness.double.contacts()
    assert not any(f"user{i}@example.com" in held for i in range(1, 6))
    assert audience.patches() == []
    audience.opt([10], 1, at=T0 + timedelta(hours=1))
    audience.run()
    assert _unsubscribes(audience) == ["user10@example.com"]
    assert harness.double.contact("user10@example.com").list_ids  # type: ignore[union-attr]
    assert harness.double.contact("user10@example.com").status == "unsubscribed"  # type: ignore[union-attr]


class _Killed(BaseException):
    """Stands for the process dying: nothing in the job catches it."""


class _KillAfterPatch(httpx.BaseTransport):
    """Serves requests, and 'kills the process' right after the nth PATCH got its answer."""

    def __init__(self, inner: httpx.BaseTransport, nth: int) -> None:
        self.inner, self.nth, self.seen = inner, nth, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "PATCH":
            self.seen += 1
            if self.seen == self.nth:
                raise _Killed
        return response


def test_kill_between_patch_and_record_repeats_it_once(harness: Harness) -> None:
    """A crash after Mailtrap answered a PATCH but before it was recorded: sent once more only."""
    audience = Audience(harness, consent={"unsubscribed": "opted_out"})
    harness.source.insert(range(1, 41))
    audience.opt(range(1, 41), 1, at=T0)
    job = audience.job(lease_ttl=1)
    job.client._api._http._transport = _KillAfterPatch(harness.transport, 15)  # type: ignore[attr-defined]
    with pytest.raises(_Killed):
        job.run()
    harness.store.release_lease("customers", job.owner)
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    sent = _unsubscribes(audience)
    assert sorted(set(sent)) == sorted(f"user{i}@example.com" for i in range(1, 41))
    assert len(sent) == 41  # the one in flight at the kill, twice; every other once
    assert all(c.status == "unsubscribed" for c in harness.double.contacts().values())
