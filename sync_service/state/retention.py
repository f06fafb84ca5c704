"""Retention: prune what the state store no longer needs, in small transactions.

``prune_store`` (``StateStore.prune``) removes, for one pipeline, rows older than a cutoff
(``state.retention`` ago):

- **finished runs** and **their batches**: a run whose end (or start, if it never recorded one)
  is older than the cutoff, that is not running, and none of whose batches is still open
  (pending or posted: a later run polls or abandons those, and needs them and their run);
- **rejections of keys gone from the source**, last seen before the cutoff: keys whose confirmed
  contact is a tombstone (the source reported the row deleted), and keys the caller reports gone
  (``gone``: the CLI re-reads rejected keys through the connector's ``fetch``);
- **re-read tokens of keys no longer in ``contacts``** (forgotten or hard-deleted keys), whatever
  their age: a token only counts next to its key's confirmed contact.

Never touched: watermarks, confirmed contacts (hashes and tombstones: invariants 2 and 9 depend
on them), leases, open batches and their contacts (invariant 3), the newest run and the run of
the newest batch of each pipeline (``status`` shows them), and rejections of keys still in the
source (invariant 8: they are retried when their row changes).

Each chunk of ``CHUNK`` runs (or rejections) is deleted in its own short transaction, so a prune
of a large store never holds the write lock for long (SQLite) or builds one huge transaction
(PostgreSQL); a prune interrupted half-way has lost nothing and can simply run again. Deleting a
run sets ``rejections.run_id`` of the rejections it recorded to NULL (the foreign key says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from sync_service.models import BatchStatus, RunOutcome
from sync_service.state import reread
from sync_service.state.engine import transaction
from sync_service.state.tables import batch_contacts, batches, contacts, rejections, runs

log = structlog.get_logger(__name__)
CHUNK = 500
TOMBSTONE = "deleted"  # diff.TOMBSTONE (the state store does not import the core)
_OPEN = (str(BatchStatus.PENDING), str(BatchStatus.POSTED))
# Source keys (of rejections) → those no longer in the source. Called with at most CHUNK keys.
GoneKeys = Callable[[Sequence[str]], set[str]]


@dataclass
class PruneReport:
    pipeline: str
    runs: int = 0
    batches: int = 0
    rejections: int = 0
    reread_tokens: int = 0  # tokens of keys no longer in ``contacts`` (sync_service.reread)


def prune_store(engine: Engine, pipeline: str, cutoff: datetime, *,
          gone: GoneKeys | None = None) -> PruneReport:
    """Delete the pipeline's rows older than ``cutoff`` that nothing needs (module docstring)."""
    report = PruneReport(pipeline)
    while True:
        with transaction(engine, "prune runs", write=True) as conn:
            ids = _prunable_runs(conn, pipeline, cutoff)
            if not ids:
                break
            report.batches += _delete_batches(conn, ids)
            report.runs += conn.execute(sa.delete(runs).where(runs.c.id.in_(ids))).rowcount
    report.rejections = _prune_rejections(engine, pipeline, cutoff, gone)
    with transaction(engine, "prune re-read tokens", write=True) as conn:
        report.reread_tokens = reread.prune(conn, pipeline)
    log.info("state.pruned", pipeline=pipeline, cutoff=cutoff.isoformat(), runs=report.runs,
             batches=report.batches, rejections=report.rejections,
             reread_tokens=report.reread_tokens)
    return report


def _prunable_runs(conn: Connection, pipeline: str, cutoff: datetime) -> list[int]:
    newest_run = sa.select(sa.func.max(runs.c.id)).where(runs.c.pipeline == pipeline)
    newest_batch_run = (sa.select(batches.c.run_id).where(batches.c.pipeline == pipeline)
                        .order_by(batches.c.id.desc()).limit(1))
    open_batch = sa.exists().where(batches.c.run_id == runs.c.id, batches.c.status.in_(_OPEN))
    query = (
        sa.select(runs.c.id)
        .where(runs.c.pipeline == pipeline,
               runs.c.outcome != str(RunOutcome.RUNNING),
               sa.func.coalesce(runs.c.finished_at, runs.c.started_at) < cutoff,
               runs.c.id < newest_run.scalar_subquery(),
               runs.c.id != sa.func.coalesce(newest_batch_run.scalar_subquery(), -1),
               ~open_batch)
        .order_by(runs.c.id).limit(CHUNK)
    )
    return list(conn.execute(query).scalars())


def _delete_batches(conn: Connection, run_ids: Sequence[int]) -> int:
    of_runs = sa.select(batches.c.id).where(batches.c.run_id.in_(run_ids))
    # Closed batches keep no contacts; this only guards against a row left by an older version.
    conn.execute(sa.delete(batch_contacts).where(batch_contacts.c.batch_id.in_(of_runs)))
    return int(conn.execute(sa.delete(batches).where(batches.c.run_id.in_(run_ids))).rowcount)


def _prune_rejections(engine: Engine, pipeline: str, cutoff: datetime,
                      gone: GoneKeys | None) -> int:
    deleted = 0
    after = ""  # keyset pagination over the old rejections, in key order
    while True:
        with transaction(engine, "read old rejections", write=False) as conn:
            old = conn.execute(
                sa.select(rejections.c.source_key)
                .where(rejections.c.pipeline == pipeline, rejections.c.last_seen < cutoff,
                       rejections.c.source_key > after)
                .order_by(rejections.c.source_key).limit(CHUNK)).scalars().all()
            if not old:
                return deleted
            tombstoned = set(conn.execute(sa.select(contacts.c.source_key).where(
                contacts.c.pipeline == pipeline, contacts.c.source_key.in_(old),
                contacts.c.hash == TOMBSTONE)).scalars())
        doomed = tombstoned | (gone(old) if gone is not None else set())
        doomed &= set(old)
        if doomed:
            with transaction(engine, "prune rejections", write=True) as conn:
                deleted += int(conn.execute(sa.delete(rejections).where(
                    rejections.c.pipeline == pipeline,
                    rejections.c.source_key.in_(sorted(doomed)),
                    rejections.c.last_seen < cutoff)).rowcount)
        after = old[-1]


def store_size(engine: Engine) -> dict[str, int]:
    """Rows per table of the whole store, and the database's size in bytes where it is known."""
    counted: dict[str, int] = {}
    with transaction(engine, "measure the store", write=False) as conn:
        for table in (runs, batches, batch_contacts, contacts, rejections):
            counted[str(table.name)] = int(conn.execute(
                sa.select(sa.func.count()).select_from(table)).scalar_one())
        dialect = conn.dialect.name
        if dialect == "sqlite":
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
            counted["bytes"] = int(pages) * int(page_size)
        elif dialect == "postgresql":
            counted["bytes"] = int(conn.execute(
                sa.select(sa.func.pg_database_size(sa.func.current_database()))).scalar_one())
    return counted
