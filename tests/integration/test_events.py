"""Custom events through the real job against the Mailtrap double (requests validated by the
spec): each sent once, after its contact; waiting for contacts not synced yet; lost answers
re-sent once and counted; a backlog drained over runs without holding up the imports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from sync_service.models import RunOutcome
from sync_service.testing.mailtrap.double import FakeClock, MailtrapDouble, RateLimits
from tests.support.audience import Audience
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


def _received(double: MailtrapDouble) -> Counter[tuple[str, str, int]]:
    return Counter((e.email, e.name, int(e.params["seats"])) for e in double.events())


def test_each_event_once_and_after_its_contact(harness: Harness) -> None:
    """No faults: every event exactly once, none before the import that created its contact."""
    audience = Audience(harness, events={})
    harness.source.insert(range(1, 51))
    audience.add_events((e, e % 50 + 1, "TrialStarted") for e in range(1, 201))
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    events = harness.double.events()
    assert len(events) == 100  # the default budget: half of one 200/60 s window
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    events = harness.double.events()
    assert len(events) == 200
    assert len({(e.email, e.params["seats"], e.time) for e in events}) == 200
    requests = harness.double.requests()
    finished = max(i for i, r in enumerate(requests) if "/imports/" in r.path)
    first_event = min(i for i, r in enumerate(requests) if r.path.endswith("/events"))
    assert first_event > finished
    assert events[0].params == {"plan": "pro", "seats": 1}
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    assert len(harness.double.events()) == 200
    counts = harness.store.audience_counts("customers")
    assert counts["events_sent"] == 200
    assert counts["events_backlog"] == 0
    assert counts["events_possibly_duplicated"] == 0


def test_event_waits_for_its_contact(harness: Harness) -> None:
    """An event whose contact is not synced yet waits, then goes once the contact exists."""
    audience = Audience(harness, events={})
    harness.source.insert(range(1, 3))
    audience.add_events([(1, 1, "DealWon"), (2, 7, "DealWon")])
    audience.run()
    assert [e.email for e in harness.double.events()] == ["user1@example.com"]
    counts = harness.store.audience_counts("customers")
    assert counts["events_waiting"] == 1
    assert counts["events_backlog"] == 1
    harness.source.insert([7])
    audience.run()
    assert [e.email for e in harness.double.events()] == ["user1@example.com",
                                                          "user7@example.com"]
    assert not any(r.status == 404 for r in harness.double.requests())


def test_lost_answers_resent_once_and_counted(harness: Harness) -> None:
    """Cut responses and 500s: no event lost; duplicates never exceed the answers lost."""
    audience = Audience(harness, events={"max_per_run": 1000})
    harness.source.insert(range(1, 101))
    audience.add_events((e, e % 100 + 1, "Login") for e in range(1, 301))
    audience.run()  # contacts first, no faults
    harness.double.clear_requests()
    harness.double.faults.drop_rate = 0.15
    harness.double.faults.error_rate = 0.1
    for _ in range(6):
        audience.run()
        if harness.store.audience_counts("customers")["events_backlog"] == 0:
            break
    received = _received(harness.double)
    assert len(received) == 300
    drops_after = sum(1 for r in harness.double.requests()
                      if r.path.endswith("/events") and r.fault == "drop_after")
    assert drops_after > 0
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= drops_after
    counts = harness.store.audience_counts("customers")
    assert counts["events_sent"] == 300
    assert duplicates <= counts["events_possibly_duplicated"] <= 300


def test_backlog_drains_over_runs_after_the_imports(harness: Harness) -> None:
    """20,000 queued events under 200/60 s: each run sends the import first, then 100 events."""
    audience = Audience(harness, events={"name": None, "name_value": "Imported"})
    harness.source.insert(range(1, 50_001))
    audience.add_events((e, e % 50_000 + 1, "x") for e in range(1, 20_001))
    first = audience.run()
    assert first.outcome is RunOutcome.SUCCEEDED
    assert len(harness.double.contacts()) == 50_000
    assert first.counts["events_sent"] == 100
    assert harness.store.audience_counts("customers")["events_backlog"] == 19_900
    second = audience.run()
    assert second.counts["events_sent"] == 100
    assert harness.store.audience_counts("customers")["events_backlog"] == 19_800


def test_backlog_drains_to_zero_over_runs(harness: Harness) -> None:
    """600 queued events under 300/60 s: 150 per run, drained in 4 runs, each sent once."""
    harness.double.rate_limits = RateLimits(account_requests=300, token_requests=None)
    audience = Audience(harness, events={}, pacing="300/60s")
    harness.source.insert(range(1, 101))
    audience.add_events((e, e % 100 + 1, "Login") for e in range(1, 601))
    backlogs = []
    for _ in range(4):
        assert audience.run().counts["events_sent"] == 150
        backlogs.append(harness.store.audience_counts("customers")["events_backlog"])
    assert backlogs == [450, 300, 150, 0]
    assert len(harness.double.events()) == 600
    counts = harness.store.audience_counts("customers")
    assert (counts["events_sent"], counts["events_possibly_duplicated"]) == (600, 0)


def test_bad_rows_are_recorded_and_a_missing_column_is_named(harness: Harness) -> None:
    """A row Mailtrap could not take is rejected with its reason (the rest go); a params column
    the events source lacks fails the run with a message naming it."""
    audience = Audience(harness, events={})
    harness.source.insert(range(1, 4))
    audience.add_events([(1, 1, "Login"), (2, 2, "x" * 300), (3, 3, "Login")])
    assert audience.run().outcome is RunOutcome.SUCCEEDED
    assert sorted(e.email for e in harness.double.events()) == ["user1@example.com",
                                                                 "user3@example.com"]
    assert harness.store.audience_counts("customers")["events_rejected"] == 1
    audience.events = {"params": ["plan", "nope"]}
    audience.add_events([(4, 1, "Login")])
    failed = audience.run()
    assert failed.outcome is RunOutcome.FAILED
    assert "events source does not return: nope" in (failed.error or "")
