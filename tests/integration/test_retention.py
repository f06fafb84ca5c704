"""Retention: a prune of a store with 10,000 old runs keeps everything a later sync needs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from sync_service.housekeeping import prune
from sync_service.models import BatchStatus, ChangeKind, ImportEntry, RunOutcome
from sync_service.state.tables import batches, rejections, runs
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.harness import T0, Harness, Source, customers
from tests.support.openapi import ValidatingTransport

OLD_RUNS = 10_000
OLD_BATCHES = 2_000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def harness(request: pytest.FixtureRequest, sqlite_url: str, double: MailtrapDouble,
            mailtrap_transport: ValidatingTransport) -> Iterator[Harness]:
    """A pipeline over a SQLite source, its state store on SQLite or PostgreSQL."""
    state_url = sqlite_url.replace(".db", "-state.db") if request.param == "sqlite" \
        else request.getfixturevalue("pg_url")
    h = Harness(double, mailtrap_transport, Source(sqlite_url), state_url)
    yield h
    h.close()


def _age_the_store(harness: Harness, old: datetime) -> int:
    """10,000 finished runs and 2,000 closed batches from long ago; returns a run id from the
    middle, to which a crash-left (pending) batch is then attached."""
    engine = harness.store.engine
    with engine.begin() as conn:
        conn.execute(runs.insert(), [
            {"pipeline": "customers", "kind": "sync", "started_at": old, "finished_at": old,
             "outcome": str(RunOutcome.SUCCEEDED), "counts": json.dumps({"read": 1})}
            for _ in range(OLD_RUNS)])
        ids = list(conn.execute(sa.select(runs.c.id).where(runs.c.started_at == old)
                                .order_by(runs.c.id)).scalars())
        conn.execute(batches.insert(), [
            {"pipeline": "customers", "run_id": run_id, "status": str(BatchStatus.FINISHED),
             "import_id": 900_000 + n, "size": 1, "created_at": old, "posted_at": old,
             "finished_at": old, "created_count": 1, "updated_count": 0, "attempts": 1}
            for n, run_id in enumerate(ids[:OLD_BATCHES])])
        conn.execute(rejections.update().values(last_seen=old, first_seen=old))
    return ids[len(ids) // 2]


def _count(harness: Harness, table: sa.Table) -> int:
    with harness.store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_prune_of_10000_old_runs_keeps_what_a_later_sync_needs(harness: Harness) -> None:
    """Old finished runs, their batches and the rejection of a deleted row go; the newest run,
    a crash-left pending batch (and its run), the rejection of a row still in the source, the
    hashes and the watermark stay; the next sync recovers the batch, sends only the change, and
    the one after sends nothing."""
    harness.source.insert(range(1, 31))
    harness.source.insert([48], email="still bad", at=T0)
    harness.source.insert([49], email="gone bad", at=T0)
    assert str(harness.run().outcome) == "succeeded"
    watermark = harness.store.get_watermark("customers")
    with harness.source.engine.begin() as conn:  # row 49 leaves the source
        conn.execute(customers.delete().where(customers.c.id == 49))
    old = datetime.now(UTC) - timedelta(days=200)
    crashed_run = _age_the_store(harness, old)
    # A run that died after recording a batch for row 10's new values, before posting it.
    harness.source.update([10], at=T0 + timedelta(hours=2), first_name="Late")
    pending = harness.store.record_batch("customers", crashed_run, [ImportEntry(
        source_key="10", email="user10@example.com", kind=ChangeKind.UPDATE, hash="0" * 64)])

    settings = harness.settings()
    (report,) = prune(settings, harness.store, settings.pipelines)

    assert report.runs == OLD_RUNS - 2  # the newest run and the pending batch's run stay
    assert report.batches == OLD_BATCHES
    assert report.rejections == 1
    assert _count(harness, runs) == 3  # the real run, the crashed run, the newest old run
    assert harness.store.get_batch(pending).status is BatchStatus.PENDING
    assert [r.source_key for r in harness.store.list_rejections("customers")] == ["48"]
    assert harness.store.get_watermark("customers") == watermark
    assert harness.store.count_contacts("customers") == 30

    imports_before = len(harness.double.imports())
    result = harness.run()
    assert str(result.outcome) == "succeeded", result.error
    assert harness.store.get_batch(pending).status is BatchStatus.ABANDONED
    assert harness.mailtrap_view()["user10@example.com"]["first_name"] == "Late"
    assert [len(i.emails) for i in harness.double.imports()[imports_before:]] == [1]
    again = harness.run()
    assert again.counts.get("sent", 0) == 0
    assert len(harness.double.imports()) == imports_before + 1


def test_prune_keeps_recent_runs_and_reports_the_store_size(harness: Harness) -> None:
    """Nothing younger than the retention is pruned; size() counts rows per table."""
    harness.source.insert(range(1, 6))
    harness.run()
    harness.run()
    settings = harness.settings()
    (report,) = prune(settings, harness.store, settings.pipelines)
    assert (report.runs, report.batches, report.rejections) == (0, 0, 0)
    size = harness.store.size()
    assert size["runs"] == 2
    assert size["contacts"] == 5
    assert size["bytes"] > 0
