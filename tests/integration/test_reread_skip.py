"""The re-read skip (issue 11, design.md invariant 2): a row read again at the cursor value its
confirmed contact was made from is accepted unmapped; a change of mapping, a hash not yet
confirmed and a backfill still check every row.

A real SQLite source and state store, the real job, the Mailtrap double behind spec validation.
The lookback (30 days) makes every sync re-read every row, as a table whose rows all share one
``updated_at`` would. A few tests edit a row *without* moving its cursor: that breaks the skip's
premise on purpose, so what a run sends shows whether it mapped the row or skipped it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from sync_service.job import RunResult, SyncJob
from sync_service.models import RunKind, RunOutcome
from sync_service.testing.mailtrap.double import ImportPolicy, MailtrapDouble
from tests.support.harness import FIELDS, T0, Harness, Source, customers
from tests.support.openapi import ValidatingTransport

PIPELINE = "customers"
ROWS = 300


@pytest.fixture
def h(sqlite_url: str, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[Harness]:
    """300 rows synced once, then all touched to one ``updated_at`` and synced again (which
    stores their tokens): every later sync re-reads all 300 unchanged rows."""
    harness = Harness(double, mailtrap_transport, Source(sqlite_url),
                      sqlite_url.replace(".db", "-state.db"), lookback="30d")
    harness.source.insert(range(1, ROWS + 1))
    assert harness.run().outcome is RunOutcome.SUCCEEDED
    _touch_all(harness.source, T0 + timedelta(hours=1))
    assert _run(harness).counts.get("rereads_skipped", 0) == 0  # new cursor: mapped, noted
    yield harness
    harness.close()


def _touch_all(source: Source, at: Any) -> None:
    with source.engine.begin() as conn:
        conn.execute(sa.update(customers).values(updated_at=at))


def _edit_in_place(source: Source, row_id: int, **values: Any) -> None:
    """Change a row without moving its cursor (what the skip's premise rules out)."""
    with source.engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.id == row_id).values(**values))


def _run(h: Harness, kind: RunKind = RunKind.SYNC, **pipeline: Any) -> RunResult:
    settings = h.settings()
    chosen = settings.pipelines[0].model_copy(update=pipeline)
    settings = settings.model_copy(update={"pipelines": [chosen]})
    job = SyncJob(settings=settings, pipeline=chosen, store=h.store, client=h.client())
    result = job.run(kind)
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    return result


def _posted(double: MailtrapDouble) -> int:
    return sum(len(i.emails) for i in double.imports())


def test_rows_read_again_at_their_confirmed_cursor_are_skipped(
        h: Harness, double: MailtrapDouble) -> None:
    """Every row re-read at its confirmed cursor is accepted unmapped: nothing is sent, the
    run counts 300 skips, and a row edited in place (cursor kept) is not even looked at."""
    before = _posted(double)
    _edit_in_place(h.source, 7, first_name="Quietly")
    result = _run(h)
    assert result.counts["rereads_skipped"] == ROWS
    assert result.counts["unchanged"] == ROWS
    assert _posted(double) == before
    assert double.contacts()["user7@example.com"].fields["first_name"] == "First7"


def test_skip_rereads_false_maps_every_row(h: Harness, double: MailtrapDouble) -> None:
    """With ``skip_rereads = false`` every re-read row is mapped and hashed: the in-place
    edit is found and sent, and nothing else is."""
    _edit_in_place(h.source, 7, first_name="Quietly")
    result = _run(h, skip_rereads=False)
    assert "rereads_skipped" not in result.counts
    assert h.imported_emails()[-1] == ["user7@example.com"]
    assert h.mailtrap_view() == h.source.expected()


def test_backfill_checks_every_row(h: Harness, double: MailtrapDouble) -> None:
    """A backfill never skips: it finds the in-place edit a sync skipped."""
    _edit_in_place(h.source, 9, last_name="Backfilled")
    assert _run(h).counts["rereads_skipped"] == ROWS
    result = _run(h, RunKind.BACKFILL)
    assert "rereads_skipped" not in result.counts
    assert h.imported_emails()[-1] == ["user9@example.com"]
    assert h.mailtrap_view() == h.source.expected()


def test_a_mapping_change_reaches_every_contact(h: Harness, double: MailtrapDouble) -> None:
    """A new mapped field changes the pipeline's fingerprint: the next sync maps every row and
    sends all 300 contacts with it; the sync after skips them all again."""
    double.add_field("surname", "text")
    mapping = h.settings().pipelines[0].mapping.model_copy(update={
        "fields": {**{t: t for t in FIELDS}, "surname": "last_name"}})
    before = _posted(double)
    result = _run(h, mapping=mapping)
    assert "rereads_skipped" not in result.counts
    assert _posted(double) - before == ROWS
    assert double.contacts()["user3@example.com"].fields["surname"] == "Last3"
    assert _run(h, mapping=mapping).counts["rereads_skipped"] == ROWS


def test_a_hash_mailtrap_never_confirmed_is_not_skipped(
        h: Harness, double: MailtrapDouble) -> None:
    """A row changed (cursor moved) whose import fails keeps its old confirmed hash: its token
    was stored before the post but does not match, so the next sync sends the row again."""
    h.source.update([11], at=T0 + timedelta(hours=2), first_name="Changed")
    double.import_policy = ImportPolicy(polls_to_finish=1)
    double.faults.import_failure_rate = 1.0
    settings = h.settings()
    job = SyncJob(settings=settings, pipeline=settings.pipelines[0], store=h.store,
                  client=h.client())
    assert job.run().outcome is RunOutcome.FAILED
    double.faults.import_failure_rate = 0.0
    result = _run(h)
    assert result.counts["rereads_skipped"] == ROWS - 1
    assert h.imported_emails()[-1] == ["user11@example.com"]
    assert h.mailtrap_view() == h.source.expected()


def test_a_drift_mark_is_sent_again(h: Harness, double: MailtrapDouble) -> None:
    """A reconcile's drift mark replaces the confirmed hash, so the key's token stops matching
    and the row is sent again; its new token is then skipped."""
    assert h.store.mark_drifted(PIPELINE, ["12"]) == 1
    before = _posted(double)
    result = _run(h)
    assert _posted(double) - before == 1
    assert result.counts.get("rereads_skipped", 0) == ROWS - 1
    assert _run(h).counts["rereads_skipped"] == ROWS


def test_plan_counts_the_rows_a_sync_would_skip(h: Harness) -> None:
    """`plan` reports how many rows a sync would accept unmapped, and writes nothing."""
    settings = h.settings()
    job = SyncJob(settings=settings, pipeline=settings.pipelines[0], store=h.store,
                  client=h.client())
    report = job.plan()
    assert report.counts["rereads_skipped"] == ROWS
    assert report.imports == 0


def test_prune_drops_the_tokens_of_forgotten_keys(h: Harness, double: MailtrapDouble) -> None:
    """Keys deleted in Mailtrap (``on_delete = "delete"``) leave their contacts; `db prune`
    drops their tokens, and keeps the others'."""
    with h.source.engine.begin() as conn:
        conn.execute(sa.delete(customers).where(customers.c.id <= 5))
    _run(h, on_delete="delete", delete_scan_every=1)
    report = h.store.prune(PIPELINE, datetime.now(UTC))
    assert report.reread_tokens == 5
    assert _run(h).counts["rereads_skipped"] == ROWS - 5


def test_one_job_object_counts_each_run_on_its_own(h: Harness) -> None:
    """A job run twice (as the daemon does) reports each run's own skips: a backfill after a
    sync that skipped every row counts none."""
    settings = h.settings()
    job = SyncJob(settings=settings, pipeline=settings.pipelines[0], store=h.store,
                  client=h.client())
    assert job.run().counts["rereads_skipped"] == ROWS
    assert "rereads_skipped" not in job.run(RunKind.BACKFILL).counts
