"""The state store: watermarks, confirmed contact hashes, runs, import batches, rejections, leases.

Everything is keyed by pipeline name. The store knows nothing of HTTP or of Mailtrap's API; the
job tells it what was sent and what Mailtrap confirmed, and the store keeps these promises:

- **Write-ahead** (invariant 3): ``record_batch`` commits a batch and all of its contacts in one
  transaction, before the job posts it; after a crash ``open_batches`` says what was in flight.
- **Confirmation is atomic** (invariants 1, 2): ``confirm_batch`` commits the batch's hashes,
  clears their rejections, closes the batch and (if given) moves the watermark in one
  transaction. Either all of it is on disk or none of it is.
- **The watermark only moves with or after the hashes it covers**: the one write path that moves
  it together with hashes is ``confirm_batch``; ``set_watermark`` exists for the moments when
  nothing is in flight (a run whose rows all proved unchanged or rejected, an operator's reset).
- **Failure leaves hashes alone**: ``fail_batch`` (FAILED or ABANDONED) never touches contacts,
  so everything in the batch looks unsent and goes out again.
- **One holder per pipeline** (invariant 7): leases are taken in a single race-free statement
  against the database's clock (see ``leases``). A run writes through ``fenced(Fence(...))``:
  every write transaction first checks that the lease still carries the run's generation and
  raises ``LeaseLost`` otherwise, so a stale holder commits nothing. ``holder_lock`` is the lock
  that tells a newcomer whether the lease's holder is still alive.
- **Addresses belong to live keys** (invariant 9): ``get_holders`` leaves tombstones out, and
  ``released_duplicates`` finds keys refused as duplicates whose address nobody holds any more.
- **Any text is kept**: keys, emails and reasons are ``SafeText`` (NUL escaped; see ``tables``).
- **Bounded memory** (invariant 5): look-ups by key or email go in chunks of ``sql.IN_CHUNK``.
- **Rejections are kept with their reason** (invariant 8) until a later confirmation of the
  same key, or an operator, clears them.

SQLAlchemy errors leave as ``StateError`` naming the database URL without its password.
Arguments that break these rules (a duplicated email in a batch, confirming a closed batch with
a different import id) raise ``ValueError`` or ``StateError`` before anything is written.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL, Connection, Engine

from sync_service.errors import StateError
from sync_service.models import (
    BatchStatus,
    ImportEntry,
    ImportResult,
    Position,
    Rejection,
    RejectKind,
    RunKind,
    RunOutcome,
    StoredContact,
)
from sync_service.reread import Seen
from sync_service.state import (
    batches,
    codec,
    consent,
    leases,
    reread,
    schema,
    sql,
    tables,
    upserts,
)
from sync_service.state.engine import DEFAULT_URL, create_state_engine, transaction
from sync_service.state.records import (
    BatchRecord,
    RejectionRecord,
    RunRecord,
    batch_from_row,
    rejection_from_row,
    run_from_row,
)
from sync_service.state.retention import GoneKeys, PruneReport, prune_store, store_size
from sync_service.state.tables import contacts, rejections, runs, watermarks

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_URL", "BatchRecord", "Fence", "RejectionRecord", "RunRecord", "StateStore"]
TOMBSTONE = "deleted"  # the hash of a deleted key's contact (sync_service.diff.TOMBSTONE)


@dataclass(frozen=True, slots=True)
class Fence:
    """A run's claim on its pipeline: every write checks the lease still has this generation."""

    pipeline: str
    owner: str
    generation: int


class StateStore:
    """The pipeline state on one database. Thread-safe: each call uses its own connection."""

    def __init__(self, engine: Engine, *, migrations_dir: str | Path | None = None) -> None:
        self.engine = engine
        # Tests point this at a copy with extra revisions; the application never sets it.
        self._migrations_dir = Path(migrations_dir) if migrations_dir else None
        self._fence: Fence | None = None

    def fenced(self, fence: Fence) -> StateStore:
        """This store (same engine) with every write checking ``fence`` in its transaction."""
        fenced = copy.copy(self)
        fenced._fence = fence
        return fenced

    @property
    def _migrations(self) -> Path:
        return self._migrations_dir or schema.migrations_dir()

    @classmethod
    def from_url(
        cls, url: str | URL = DEFAULT_URL, *, migrations_dir: str | Path | None = None
    ) -> StateStore:
        """A store on SQLite or PostgreSQL; ConfigError if the URL is malformed or unsupported."""
        return cls(create_state_engine(url), migrations_dir=migrations_dir)

    def close(self) -> None:
        self.engine.dispose()

    # schema -------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to ``revision`` in one transaction."""
        with self._write("upgrade") as conn:
            schema.upgrade(conn, self._migrations, revision)

    def downgrade(self, revision: str = "base") -> None:
        """Run the Alembic migrations down to ``revision`` (``base`` drops every table)."""
        with self._write("downgrade") as conn:
            schema.downgrade(conn, self._migrations, revision)

    def ensure_schema(self) -> None:
        """Create the schema in a new database; StateError if an existing one is not at head."""
        with self._write("schema check") as conn:
            schema.ensure(conn, self._migrations)

    def schema_revision(self) -> str | None:
        """The database's Alembic revision (None for a new database), for ``db current``."""
        with self._read("schema revision") as conn:
            current = schema.current_revisions(conn)
        return ", ".join(current) if current else None

    def head_revision(self) -> str:
        """The Alembic revision this version of the code needs."""
        return ", ".join(schema.head_revisions(self._migrations))

    # watermarks ---------------------------------------------------------------------------

    def get_watermark(self, pipeline: str) -> Position | None:
        with self._read("get_watermark") as conn:
            row = conn.execute(
                sa.select(watermarks.c.cursor_value, watermarks.c.key_value).where(
                    watermarks.c.pipeline == pipeline
                )
            ).first()
        if row is None:
            return None
        try:
            return Position(codec.decode(row.cursor_value), codec.decode(row.key_value))
        except ValueError as exc:
            raise StateError(f"the watermark of pipeline {pipeline!r} is unreadable") from exc

    def set_watermark(self, pipeline: str, position: Position | None) -> None:
        """Move (or, with None, reset) the watermark on its own; see the module docstring."""
        with self._write("set_watermark") as conn:
            upserts.write_watermark(conn, pipeline, position)

    # confirmed contacts -------------------------------------------------------------------

    def get_contacts(self, pipeline: str, keys: Sequence[str]) -> dict[str, StoredContact]:
        """The confirmed email and hash of each known key; unknown keys are absent."""
        found: dict[str, StoredContact] = {}
        with self._read("get_contacts") as conn:
            for among in sql.matching(conn, contacts.c.source_key, list(dict.fromkeys(keys))):
                rows = conn.execute(
                    sa.select(contacts.c.source_key, contacts.c.email, contacts.c.hash,
                              contacts.c.import_id).where(contacts.c.pipeline == pipeline, among)
                )
                for key, email, hash_, import_id in rows.all():  # fetchall, not a fetchone per row
                    found[key] = StoredContact(source_key=key, email=email, hash=hash_,
                                               import_id=import_id)
        return found

    def get_owners(self, pipeline: str, emails: Sequence[str]) -> dict[str, str]:
        """Email -> the live source key whose confirmed contact has it (lowest key if several).

        A deleted key's tombstone holds no address.
        """
        return {email: min(keys) for email, keys in self.get_holders(pipeline, emails).items()}

    def get_holders(self, pipeline: str, emails: Sequence[str]) -> dict[str, list[str]]:
        """Email -> every source key whose confirmed, not deleted contact has it (sorted)."""
        holders: dict[str, list[str]] = {}
        with self._read("get_holders") as conn:
            for among in sql.matching(conn, contacts.c.email, list(dict.fromkeys(emails))):
                # No ORDER BY: SQLite would walk the primary key to avoid a sort, and scan the
                # pipeline's every contact instead of probing the email index.
                rows = conn.execute(
                    sa.select(contacts.c.email, contacts.c.source_key, contacts.c.hash).where(
                        contacts.c.pipeline == pipeline, among
                    )
                )
                for email, key, hash_ in rows.all():
                    if hash_ != TOMBSTONE:
                        holders.setdefault(email, []).append(key)
        for keys in holders.values():
            if len(keys) > 1:  # nearly every address has one holder: no sort (issue 11)
                keys.sort()
        return holders

    def reread_tokens(self, pipeline: str, keys: Sequence[str]) -> dict[str, Seen]:
        """The re-read skip's view of these keys (``sync_service.reread``): the stored token
        with the confirmed hash, address and import id; keys with a rejection are absent."""
        with self._read("reread_tokens") as conn:
            return reread.seen(conn, pipeline, keys)

    def note_reread(self, pipeline: str, tokens: Mapping[str, str]) -> None:
        """Store the re-read skip's tokens of these keys."""
        if tokens:
            with self._write("note_reread") as conn:
                reread.note(conn, pipeline, tokens)

    def count_contacts(self, pipeline: str) -> int:
        return self._count("count_contacts", contacts, pipeline)

    def live_keys(self, pipeline: str, chunk: int = 5_000) -> Iterator[list[str]]:
        """The keys whose confirmed contact is not a tombstone, a chunk at a time, by key."""
        after: str | None = None
        while True:
            with self._read("live_keys") as conn:
                query = sa.select(contacts.c.source_key).where(
                    contacts.c.pipeline == pipeline, contacts.c.hash != TOMBSTONE)
                if after is not None:
                    query = query.where(contacts.c.source_key > after)
                found = list(conn.execute(query.order_by(contacts.c.source_key).limit(chunk))
                             .scalars())
            if not found:
                return
            yield found
            after = found[-1]

    # runs ---------------------------------------------------------------------------------

    def start_run(self, pipeline: str, kind: RunKind) -> int:
        with self._write("start_run") as conn:
            run_id: int = conn.execute(
                sa.insert(runs)
                .values(pipeline=pipeline, kind=kind.value, started_at=sql.now(conn),
                        outcome=RunOutcome.RUNNING.value, counts="{}")
                .returning(runs.c.id)
            ).scalar_one()
        return run_id

    def finish_run(
        self, run_id: int, outcome: RunOutcome, counts: Mapping[str, int], error: str | None = None
    ) -> None:
        with self._write("finish_run") as conn:
            result = conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(outcome=outcome.value, counts=json.dumps(dict(counts), sort_keys=True),
                        error=error, finished_at=sql.now(conn))
            )
            if result.rowcount != 1:
                raise StateError(f"no run with id {run_id}")

    def interrupt_stale_runs(self, pipeline: str) -> int:
        """Mark the pipeline's RUNNING runs INTERRUPTED; returns how many.

        Call it right after taking the lease and before ``start_run``: whoever held the lease
        before is gone, so any run still marked RUNNING died with its process.
        """
        with self._write("interrupt_stale_runs") as conn:
            result = conn.execute(
                sa.update(runs)
                .where(runs.c.pipeline == pipeline, runs.c.outcome == RunOutcome.RUNNING.value)
                .values(outcome=RunOutcome.INTERRUPTED.value, finished_at=sql.now(conn),
                        error="the process running it stopped before it finished")
            )
        return result.rowcount

    def last_run(self, pipeline: str) -> RunRecord | None:
        found = self.list_runs(pipeline, limit=1)
        return found[0] if found else None

    def list_runs(self, pipeline: str, limit: int = 20) -> list[RunRecord]:
        """The pipeline's runs, newest first."""
        with self._read("list_runs") as conn:
            rows = conn.execute(
                sa.select(runs).where(runs.c.pipeline == pipeline)
                .order_by(runs.c.id.desc()).limit(limit)
            ).mappings()
            return [run_from_row(row) for row in rows]

    # batches ------------------------------------------------------------------------------

    def record_batch(self, pipeline: str, run_id: int, entries: Sequence[ImportEntry]) -> int:
        """Record a PENDING batch with all of its contacts, before it is posted (write-ahead)."""
        with self._write("record_batch") as conn:
            return batches.record(conn, pipeline, run_id, entries, sql.now(conn))

    def mark_batch_posted(self, batch_id: int, import_id: int) -> None:
        """Mailtrap accepted the batch as ``import_id``: POSTED, posted_at, attempts + 1."""
        with self._write("mark_batch_posted") as conn:
            batches.mark_posted(conn, batch_id, import_id, sql.now(conn))

    def confirm_batch(
        self, batch_id: int, result: ImportResult, watermark: Position | None = None,
        forget: Sequence[str] = (),
    ) -> None:
        """Mailtrap finished the import: commit its hashes (and the watermark) atomically.

        Keys with a hashed entry get that email and hash and lose their rejections. A key whose
        only entry is exclusion-only at its confirmed email loses its stored state (it left the
        lists). The batch becomes FINISHED with Mailtrap's counts, and its contacts are deleted.
        ``forget``: deleted keys whose address another key of the batch took; their stored
        state goes in the same transaction.
        """
        with self._write("confirm_batch") as conn:
            pipeline, written = batches.confirm(conn, batch_id, result, sql.now(conn))
            _forget(conn, pipeline, forget)
            if watermark is not None:
                upserts.write_watermark(conn, pipeline, watermark)
        self._refresh_statistics(written)

    def advance(self, pipeline: str, watermark: Position | None, forget: Sequence[str] = ()
                ) -> None:
        """Move the watermark (if given) and forget ``forget``'s keys, in one transaction."""
        if watermark is None and not forget:
            return
        with self._write("advance") as conn:
            _forget(conn, pipeline, forget)
            if watermark is not None:
                upserts.write_watermark(conn, pipeline, watermark)

    def fail_batch(
        self, batch_id: int, error: str, status: BatchStatus = BatchStatus.FAILED
    ) -> None:
        """Close the batch as FAILED or ABANDONED. Its keys' confirmed hashes become
        ``unknown`` (it may have reached Mailtrap in part), so their rows are sent again."""
        with self._write("fail_batch") as conn:
            batches.fail(conn, batch_id, error, status, sql.now(conn))

    def remove_from_batch(self, batch_id: int, emails: Sequence[str]) -> int:
        """Take contacts (e.g. ones Mailtrap refused) out of an open batch; returns how many."""
        with self._write("remove_from_batch") as conn:
            return batches.remove(conn, batch_id, emails)

    def get_batch(self, batch_id: int) -> BatchRecord:
        """The batch; StateError if there is none with that id."""
        with self._read("get_batch") as conn:
            return batches.load(conn, batch_id)

    def open_batches(self, pipeline: str) -> list[BatchRecord]:
        """PENDING and POSTED batches, oldest first: what a crash may have left in flight."""
        open_ = [status.value for status in batches.OPEN]
        return self._batches(
            "open_batches",
            sa.select(tables.batches)
            .where(tables.batches.c.pipeline == pipeline, tables.batches.c.status.in_(open_))
            .order_by(tables.batches.c.id),
        )

    def last_batch(self, pipeline: str) -> BatchRecord | None:
        found = self._batches(
            "last_batch",
            sa.select(tables.batches).where(tables.batches.c.pipeline == pipeline)
            .order_by(tables.batches.c.id.desc()).limit(1),
        )
        return found[0] if found else None

    def batch_entries(self, batch_id: int) -> list[ImportEntry]:
        """An open batch's entries, by email (fields and list ids are not stored)."""
        with self._read("batch_entries") as conn:
            return batches.entries(conn, batch_id)

    # rejections ---------------------------------------------------------------------------

    def record_rejections(
        self, pipeline: str, run_id: int | None, rejections: Sequence[Rejection]
    ) -> None:
        """Record or refresh rejections; a key rejected again gets attempts + 1."""
        if rejections:
            with self._write("record_rejections") as conn:
                upserts.rejections(conn, pipeline, run_id, rejections)
            # A young, never analysed rejections table made PostgreSQL's cached plan for
            # ``get_rejections`` compare each row with every key of the array: 18 ms per 2,000
            # keys against 3.4 ms once analysed (issue 11).
            self._refresh_statistics(len(rejections), tables.rejections, minimum=1)

    def list_rejections(self, pipeline: str, limit: int | None = None) -> list[RejectionRecord]:
        """The pipeline's rejections, most recently seen first."""
        with self._read("list_rejections") as conn:
            rows = conn.execute(
                sa.select(rejections).where(rejections.c.pipeline == pipeline)
                .order_by(rejections.c.last_seen.desc(), rejections.c.source_key).limit(limit)
            ).mappings()
            return [rejection_from_row(row) for row in rows]

    def get_rejections(self, pipeline: str, keys: Sequence[str]) -> dict[str, Rejection]:
        """The rejections on record for these keys (with the refused hash), by key."""
        found: dict[str, Rejection] = {}
        with self._read("get_rejections") as conn:
            if conn.execute(sa.select(rejections.c.source_key).where(
                    rejections.c.pipeline == pipeline).limit(1)).first() is None:
                return found  # most pipelines have none: one cheap probe
            for among in sql.matching(conn, rejections.c.source_key, list(dict.fromkeys(keys))):
                rows = conn.execute(
                    sa.select(rejections.c.source_key, rejections.c.email, rejections.c.kind,
                              rejections.c.reason, rejections.c.hash)
                    .where(rejections.c.pipeline == pipeline, among))
                for key, email, kind, reason, hash_ in rows.all():
                    found[key] = Rejection(key, email, RejectKind(kind), reason, hash_)
        return found

    def released_duplicates(self, pipeline: str) -> list[str]:
        """Keys rejected as duplicates whose address no other live key holds any more."""
        other = sa.exists().where(
            contacts.c.pipeline == rejections.c.pipeline, contacts.c.email == rejections.c.email,
            contacts.c.source_key != rejections.c.source_key, contacts.c.hash != TOMBSTONE)
        with self._read("released_duplicates") as conn:
            return list(conn.execute(
                sa.select(rejections.c.source_key).where(
                    rejections.c.pipeline == pipeline,
                    rejections.c.kind == RejectKind.DUPLICATE.value, ~other)
                .order_by(rejections.c.source_key)).scalars())

    def count_rejections(self, pipeline: str) -> int:
        return self._count("count_rejections", rejections, pipeline)

    def clear_rejections(self, pipeline: str, keys: Sequence[str],
                         kind: RejectKind | None = None) -> None:
        """Forget the rejections of ``keys`` (only those of ``kind``, if given)."""
        if not keys:
            return
        only = [rejections.c.kind == kind.value] if kind is not None else []
        with self._write("clear_rejections") as conn:
            for chunk in sql.chunked(list(dict.fromkeys(keys))):
                conn.execute(
                    sa.delete(rejections).where(
                        rejections.c.pipeline == pipeline, rejections.c.source_key.in_(chunk),
                        *only,
                    )
                )

    # leases -------------------------------------------------------------------------------

    def acquire_lease(self, pipeline: str, owner: str, ttl_seconds: float) -> bool:
        """Take the lease if it is free, expired or already this owner's; False otherwise."""
        return self.take_lease(pipeline, owner, ttl_seconds) is not None

    def take_lease(self, pipeline: str, owner: str, ttl_seconds: float, *,
                   force: bool = False) -> int | None:
        """Take the lease as ``acquire_lease`` does (or whatever its state, with ``force``, when
        its holder is known dead); returns the lease's new generation, or None if refused."""
        with self._write("acquire_lease", fenced=False) as conn:
            return leases.acquire(conn, pipeline, owner, ttl_seconds, force=force)

    def holder_lock(self, pipeline: str) -> leases.HolderLock:
        """The lock a lease holder keeps for as long as its process lives (see ``leases``)."""
        return leases.HolderLock(self.engine, pipeline)

    def renew_lease(self, pipeline: str, owner: str, ttl_seconds: float,
                    generation: int | None = None) -> bool:
        """Extend this owner's lease; False if it was lost (taken over or released)."""
        with self._write("renew_lease", fenced=False) as conn:
            return leases.renew(conn, pipeline, owner, ttl_seconds, generation)

    def release_lease(self, pipeline: str, owner: str) -> None:
        """Give the lease up; does nothing if this owner no longer holds it."""
        with self._write("release_lease", fenced=False) as conn:
            leases.release(conn, pipeline, owner)

    def lease_holder(self, pipeline: str) -> tuple[str, datetime] | None:
        """(owner, expires_at) of the pipeline's lease, expired or not; None if there is none."""
        with self._read("lease_holder") as conn:
            return leases.holder(conn, pipeline)

    def pipelines(self) -> list[str]:
        """Every pipeline with a watermark, contacts, runs, batches or rejections, sorted."""
        kept = (watermarks, contacts, runs, tables.batches, rejections)
        union = sa.union(*(sa.select(table.c.pipeline) for table in kept))
        with self._read("pipelines") as conn:
            return sorted(conn.execute(union).scalars())

    # retention (see state/retention.py) --------------------------------------------------

    def prune(self, pipeline: str, cutoff: datetime, *,
              gone: GoneKeys | None = None) -> PruneReport:
        """Delete the pipeline's runs, batches and gone keys' rejections older than ``cutoff``
        that nothing needs, in small transactions."""
        return prune_store(self.engine, pipeline, cutoff, gone=gone)

    def size(self) -> dict[str, int]:
        """Rows per table, and ``bytes`` of the database where the engine tells it."""
        return store_size(self.engine)

    # plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _read(self, what: str) -> Iterator[Connection]:
        with transaction(self.engine, what, write=False) as conn:
            yield conn

    @contextmanager
    def _write(self, what: str, *, fenced: bool = True) -> Iterator[Connection]:
        with transaction(self.engine, what, write=True) as conn:
            if fenced and self._fence is not None:
                fence = self._fence
                leases.check_fence(conn, fence.pipeline, fence.owner, fence.generation)
            yield conn

    def _refresh_statistics(self, written: int, table: sa.Table = contacts, *,
                            minimum: int = sql.ANALYZE_MIN_ROWS) -> None:
        # After the commit, in its own transaction, and best effort: the confirmation stands
        # whatever happens here, and the job must not be told otherwise.
        if self.engine.dialect.name != "postgresql" or written < minimum:
            return
        try:
            with self._write("analyze") as conn:
                sql.analyze_if_stale(conn, table, written)
        except StateError as exc:
            log.warning("state.analyze_failed", error=str(exc))

    def _count(self, what: str, table: sa.Table, pipeline: str) -> int:
        with self._read(what) as conn:
            query = sa.select(sa.func.count()).select_from(table)
            return int(conn.execute(query.where(table.c.pipeline == pipeline)).scalar_one())

    def _batches(self, what: str, query: sa.Select[tuple[object, ...]]) -> list[BatchRecord]:
        with self._read(what) as conn:
            return [batch_from_row(row) for row in conn.execute(query).mappings()]

    # --- consent branch: opt-outs, custom events, reconcile (see state/consent.py) ---------

    def record_optouts(self, pipeline: str, found: Mapping[str, str], *,
                       origin: str = consent.SOURCE) -> int:
        """Record opted-out keys (key → email): pending from the source, done from Mailtrap."""
        if not found:
            return 0
        with self._write("record_optouts") as conn:
            return consent.record_optouts(conn, pipeline, found, origin, sql.now(conn))

    def pending_optouts(self, pipeline: str, after: str | None = None,
                        limit: int = 500) -> list[tuple[str, str]]:
        """Pending opt-outs (key, email) whose contact Mailtrap confirmed, in key order."""
        with self._read("pending_optouts") as conn:
            return consent.pending_optouts(conn, pipeline, after, limit)

    def optout_done(self, pipeline: str, key: str, email: str) -> None:
        """Mailtrap answered the unsubscribe: the opt-out is done."""
        with self._write("optout_done") as conn:
            consent.optout_done(conn, pipeline, key, email, sql.now(conn))

    def optout_refused(self, pipeline: str, key: str, reason: str) -> None:
        with self._write("optout_refused") as conn:
            consent.optout_refused(conn, pipeline, key, reason)

    def unsubscribed_keys(self, pipeline: str, keys: Sequence[str]) -> set[str]:
        with self._read("unsubscribed_keys") as conn:
            return consent.unsubscribed_keys(conn, pipeline, keys)

    def events_mark(self, pipeline: str) -> Position | None:
        with self._read("events_mark") as conn:
            return consent.events_mark(conn, pipeline)

    def queue_events(self, pipeline: str, events: Sequence[consent.QueuedEvent],
                     mark: Position | None) -> int:
        """Queue unseen events and move the events watermark, in one transaction."""
        with self._write("queue_events") as conn:
            return consent.queue_events(conn, pipeline, events, mark, sql.now(conn))

    def requeue_lost_events(self, pipeline: str) -> int:
        with self._write("requeue_lost_events") as conn:
            return consent.requeue_lost(conn, pipeline)

    def ready_events(self, pipeline: str, limit: int,
                     after_seq: int = 0) -> list[consent.QueuedEvent]:
        with self._read("ready_events") as conn:
            return consent.ready_events(conn, pipeline, limit, after_seq)

    def set_event(self, pipeline: str, key: str, status: str, reason: str | None = None) -> None:
        with self._write("set_event") as conn:
            consent.set_event(conn, pipeline, key, status, sql.now(conn), reason=reason)

    def event_lost(self, pipeline: str, key: str) -> None:
        with self._write("event_lost") as conn:
            consent.event_lost(conn, pipeline, key)

    def mark_drifted(self, pipeline: str, keys: Sequence[str]) -> int:
        with self._write("mark_drifted") as conn:
            return consent.mark_drifted(conn, pipeline, keys)

    def forget_drift(self, pipeline: str, keys: Sequence[str]) -> None:
        with self._write("forget_drift") as conn:
            consent.forget_drift(conn, pipeline, keys)

    def drifted_keys(self, pipeline: str, after: str | None = None,
                     limit: int = 2_000) -> list[str]:
        with self._read("drifted_keys") as conn:
            return consent.drifted_keys(conn, pipeline, after, limit)

    def contacts_page(self, pipeline: str, after: str | None = None,
                      limit: int = 2_000) -> list[tuple[str, str, str]]:
        with self._read("contacts_page") as conn:
            return consent.contacts_page(conn, pipeline, after, limit)

    def reconciled_at(self, pipeline: str) -> datetime | None:
        with self._read("reconciled_at") as conn:
            return consent.reconciled_at(conn, pipeline)

    def set_reconciled(self, pipeline: str) -> None:
        with self._write("set_reconciled") as conn:
            consent.set_reconciled(conn, pipeline, sql.now(conn))

    def audience_counts(self, pipeline: str) -> dict[str, int]:
        """Opt-out and event counters for ``status`` and ``/metrics``."""
        with self._read("audience_counts") as conn:
            return {**consent.optout_counts(conn, pipeline), **consent.event_counts(conn, pipeline)}


def _forget(conn: Connection, pipeline: str, keys: Sequence[str]) -> None:
    for chunk in sql.chunked(list(dict.fromkeys(keys))):
        conn.execute(sa.delete(contacts).where(contacts.c.pipeline == pipeline,
                                               contacts.c.source_key.in_(chunk)))
