"""End to end: a real source table → the sync job → real state store → the Mailtrap double.

Every request the client sends, and every answer, is validated against Mailtrap's OpenAPI files.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from sync_service.models import BatchStatus, RunKind, RunOutcome
from sync_service.testing.mailtrap.double import ImportPolicy, MailtrapDouble
from tests.support.harness import T0, Harness, Source
from tests.support.openapi import ValidatingTransport


@pytest.fixture
def harness(any_db_url: str, sqlite_url: str, double: MailtrapDouble,
            mailtrap_transport: ValidatingTransport) -> Iterator[Harness]:
    """A pipeline over a source on each engine, state in SQLite."""
    h = Harness(double, mailtrap_transport, Source(any_db_url),
                sqlite_url.replace(".db", "-state.db"))
    yield h
    h.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest) -> str:
    """A fresh state store database: SQLite file or PostgreSQL."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def h(sqlite_url: str, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[Harness]:
    """A pipeline over a SQLite source, state in another SQLite file."""
    harness = Harness(double, mailtrap_transport, Source(sqlite_url),
                      sqlite_url.replace(".db", "-s.db"))
    yield harness
    harness.close()


def test_run_twice_sends_only_changes(harness: Harness) -> None:
    """Run 1 creates every contact; after 10 edits run 2 sends exactly those; run 3 nothing."""
    harness.source.insert(range(1, 201))
    first = harness.run()
    assert first.outcome is RunOutcome.SUCCEEDED, first.error
    assert first.counts["created"] == 200
    assert harness.mailtrap_view() == harness.source.expected()
    customers_list = next(i for i, name in harness.double.lists().items() if name == "Customers")
    assert all(c.list_ids == {customers_list} for c in harness.double.contacts().values())

    edited = list(range(5, 105, 10))
    harness.source.update(edited, at=T0 + timedelta(hours=1), first_name="Edited")
    imports_before = len(harness.double.imports())
    second = harness.run()
    assert second.outcome is RunOutcome.SUCCEEDED, second.error
    new_imports = harness.imported_emails()[imports_before:]
    assert sorted(e for batch in new_imports for e in batch) == sorted(
        f"user{i}@example.com" for i in edited)
    assert second.counts["updated"] == 10

    writes_before = sum(r.is_write for r in harness.double.requests())
    third = harness.run()
    assert third.outcome is RunOutcome.SUCCEEDED, third.error
    assert sum(r.is_write for r in harness.double.requests()) == writes_before
    assert harness.mailtrap_view() == harness.source.expected()
    assert len(harness.transport.requests_checked) > 0


def test_ties_across_fetch_chunks_and_late_rows(harness: Harness) -> None:
    """5,000 rows sharing a cursor across page boundaries all sync once; a late row is caught."""
    harness.fetch_size = 1_000
    harness.lookback = "5m"
    harness.source.insert(range(1, 5_001))
    first = harness.run()
    assert first.outcome is RunOutcome.SUCCEEDED, first.error
    assert len(harness.double.contacts()) == 5_000

    imports_before = len(harness.double.imports())
    assert harness.run().counts.get("created", 0) == 0
    assert len(harness.double.imports()) == imports_before

    # committed late: its cursor is a minute behind the watermark, inside the 5 minute window
    harness.source.insert([9_999], at=T0 - timedelta(minutes=1))
    late = harness.run()
    assert late.counts["created"] == 1
    assert harness.imported_emails()[-1] == ["user9999@example.com"]
    assert harness.mailtrap_view() == harness.source.expected()


def test_state_store_on_each_engine(state_url: str, sqlite_url: str, double: MailtrapDouble,
                                    mailtrap_transport: ValidatingTransport) -> None:
    """The same sync works with its state in SQLite and in PostgreSQL."""
    h = Harness(double, mailtrap_transport, Source(sqlite_url), state_url)
    try:
        h.source.insert(range(1, 51))
        assert h.run().outcome is RunOutcome.SUCCEEDED
        h.source.update([7], at=T0 + timedelta(hours=1), seats=49)
        assert h.run().counts["updated"] == 1
        assert h.mailtrap_view() == h.source.expected()
        assert h.store.count_contacts("customers") == 50
    finally:
        h.close()


def test_120001_contacts_go_out_in_three_imports(sqlite_url: str, double: MailtrapDouble) -> None:
    """120,001 changed contacts are sent as three imports, none above 50,000."""
    transport = ValidatingTransport(_plain_transport(double))
    h = Harness(double, transport, Source(sqlite_url), sqlite_url.replace(".db", "-s.db"))
    try:
        h.source.insert(range(1, 120_002))
        result = h.run()
        assert result.outcome is RunOutcome.SUCCEEDED, result.error
        sizes = [len(i.contacts) for i in double.imports()]
        assert sizes == [50_000, 50_000, 20_001]
        assert len(double.contacts()) == 120_001
    finally:
        h.close()


def _plain_transport(double: MailtrapDouble) -> httpx.BaseTransport:
    from sync_service.testing.mailtrap.transport import InProcessTransport

    return InProcessTransport(double.app)


class _Crash(BaseException):
    """Stands for the process dying: nothing after it runs (no except clause catches it)."""


class _CrashingTransport(httpx.BaseTransport):
    """Delivers requests until ``crash_on`` says the process dies at this one."""

    def __init__(self, inner: httpx.BaseTransport, crash_on: str) -> None:
        self.inner, self.crash_on, self.armed = inner, crash_on, True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_post = request.method == "POST" and request.url.path.endswith("/contacts/imports")
        is_poll = request.method == "GET" and "/contacts/imports/" in request.url.path
        if self.armed and ((self.crash_on == "before_post" and is_post)
                           or (self.crash_on == "while_polling" and is_poll)):
            self.armed = False
            raise _Crash
        return self.inner.handle_request(request)


@pytest.mark.parametrize("crash_on", ["before_post", "while_polling"])
def test_crash_mid_import_loses_nothing(crash_on: str, sqlite_url: str,
                                        double: MailtrapDouble) -> None:
    """A crash after recording or after posting a batch: the next run ends with Mailtrap equal
    to the source, polling the import it knows instead of posting it again."""
    double.import_policy = ImportPolicy(polls_to_finish=3)
    crashing = _CrashingTransport(ValidatingTransport(_plain_transport(double)), crash_on)
    h = Harness(double, crashing, Source(sqlite_url), sqlite_url.replace(".db", "-s.db"))  # type: ignore[arg-type]
    try:
        h.source.insert(range(1, 301))
        with pytest.raises(_Crash):
            h.run()
        open_batches = h.store.open_batches("customers")
        assert [b.status for b in open_batches] == (
            [BatchStatus.PENDING] if crash_on == "before_post" else [BatchStatus.POSTED])
        assert h.store.get_watermark("customers") is None

        recovered = h.run()
        assert recovered.outcome is RunOutcome.SUCCEEDED, recovered.error
        assert h.mailtrap_view() == h.source.expected()
        assert len(double.imports()) == 1  # known import polled, not posted twice
        assert h.store.open_batches("customers") == []
        assert h.run().counts.get("created", 0) == 0
    finally:
        h.close()


def test_backfill_skips_unchanged_unless_resend(h: Harness) -> None:
    """Backfill re-reads everything but sends only changes; --resend sends everything."""
    h.source.insert(range(1, 101))
    h.run()
    plain = h.run(RunKind.BACKFILL)
    assert plain.counts["read"] == 100
    assert plain.counts.get("imports", 0) == 0
    resent = h.run(RunKind.BACKFILL, resend=True)
    assert resent.counts["updated"] == 100
    assert resent.counts["imports"] == 1


def test_invalid_and_duplicate_rows_are_recorded_not_sent(h: Harness,
                                                          double: MailtrapDouble) -> None:
    """Rows without a valid email, and a second key with a taken email, are recorded, not sent."""
    h.source.insert(range(1, 11))
    h.source.insert([11], email=None)
    h.source.insert([12], email="not an email")
    h.source.insert([13], email="  USER3@Example.com ")  # key 3 owns this address
    result = h.run()
    assert result.counts["invalid"] == 2
    assert result.counts["duplicate"] == 1
    assert len(double.contacts()) == 10
    reasons = {r.source_key: (str(r.kind), r.reason)
               for r in h.store.list_rejections("customers")}
    assert reasons["11"][0] == "invalid_email"
    assert "missing" in reasons["11"][1]
    assert reasons["13"][0] == "duplicate"
    assert "source key 3" in reasons["13"][1]


def test_email_change_takes_old_address_out_of_lists(h: Harness, double: MailtrapDouble) -> None:
    """When a key's email changes, the old contact leaves the pipeline's lists."""
    h.source.insert(range(1, 4))
    h.run()
    h.source.update([2], at=T0 + timedelta(hours=1), email="moved@example.com")
    assert h.run().counts["email_changed"] == 1
    contacts = double.contacts()
    assert contacts["user2@example.com"].list_ids == frozenset()
    assert contacts["moved@example.com"].list_ids != frozenset()
    assert h.store.get_contacts("customers", ["2"])["2"].email == "moved@example.com"


def test_missing_mapped_column_is_a_config_error(h: Harness, double: MailtrapDouble) -> None:
    """A mapped source column that does not exist fails the run with an error naming it."""
    h.source.insert(range(1, 3))
    with h.source.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers DROP COLUMN last_name"))
    result = h.run()
    assert result.outcome is RunOutcome.FAILED
    assert "last_name" in (result.error or "")
    assert double.contacts() == {}
