"""One pipeline pass: read → diff → record batch → post import → poll → commit hashes + watermark.

This is the only module where the connector, the diff, the state store and the Mailtrap client
meet. The invariants of design.md it keeps, and how:

1. No change is lost: a batch's hashes and the watermark after it are committed in one
   transaction, only once Mailtrap reports the import ``finished`` (``StateStore.confirm_batch``);
   the watermark given with a batch is the position of the last record whose change is in it or
   in an earlier batch. An import that ends ``failed`` or over the contact quota commits nothing.
3. Crash at any instant: a batch is recorded before it is posted; the next run first polls every
   import it knows (and commits it when finished) and abandons batches that never got an id —
   re-reading from the unmoved watermark sends those contacts again (imports upsert by email).
7. One pipeline in one place: the run holds the pipeline's lease in the state store and renews
   it; if the lease is lost, nothing more is posted.
8. Rejected contacts keep their old hash and have their reason on record; ``retry`` re-reads their
   current source rows and sends them again.

A stop request (SIGTERM, SIGINT, daemon shutdown) is honoured between steps: no new import is
posted, an import being polled stays recorded for the next run, state is committed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import structlog

from sync_service.connector import Connector, load_connector
from sync_service.diff import Change, Differ
from sync_service.errors import ConfigError, MailtrapValidationError, PipelineBusy, SyncError
from sync_service.mailtrap.client import MailtrapClient
from sync_service.mapping import Mapper
from sync_service.models import (
    BatchStatus,
    ChangeKind,
    ImportEntry,
    ImportResult,
    Position,
    Rejection,
    RejectKind,
    RunKind,
    RunOutcome,
    SourceRecord,
    StoredContact,
)
from sync_service.settings import AppSettings, PipelineSettings
from sync_service.state import StateStore

log = structlog.get_logger(__name__)
READ_CHUNK = 2_000
LEASE_TTL = 60.0
MAX_IMPORT_FAILURES = 4


class Interrupted(SyncError):
    """The run stopped on request (or lost its lease) between two steps."""


class ImportFailed(SyncError):
    """An import kept failing after its retries; its contacts stay unconfirmed."""


class RunObserver(Protocol):
    """What the job reports as it goes (metrics, progress); every method is optional work."""

    def records_read(self, pipeline: str, count: int) -> None: ...

    def import_done(self, pipeline: str, result: ImportResult) -> None: ...


@dataclass
class RunResult:
    pipeline: str
    kind: RunKind
    outcome: RunOutcome
    counts: dict[str, int]
    run_id: int | None = None
    error: str | None = None
    duration_s: float = 0.0


@dataclass
class PlanReport:
    pipeline: str
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    imports: int = 0
    lists_to_create: list[str] = field(default_factory=list)


def new_owner() -> str:
    """A lease owner id naming this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def chunked(records: Iterable[SourceRecord], size: int) -> Iterator[list[SourceRecord]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk


class SyncJob:
    """Runs one pipeline: ``run`` (sync or backfill), ``retry_rejected`` and ``plan``."""

    def __init__(
        self,
        *,
        settings: AppSettings,
        pipeline: PipelineSettings,
        store: StateStore,
        client: MailtrapClient,
        stop: threading.Event | None = None,
        owner: str | None = None,
        observer: RunObserver | None = None,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.name = pipeline.name
        self.store = store
        self.client = client
        self.stop = stop or threading.Event()
        self.owner = owner or new_owner()
        self.observer = observer
        self.lease_ttl = lease_ttl
        self._lease_lost = threading.Event()

    # entry points ------------------------------------------------------------------------
    def run(self, kind: RunKind = RunKind.SYNC, *, resend: bool = False) -> RunResult:
        """One incremental pass (SYNC) or a full re-read (BACKFILL); raises PipelineBusy."""

        def body(run: _Delivery) -> None:
            differ = Differ(self.build_mapper(create_lists=True), resend=resend)
            since = None if kind is RunKind.BACKFILL else self.store.get_watermark(self.name)
            with self.open_connector() as connector:
                self._scan(connector.read(since), differ, run)
            run.finish()

        return self._execute(kind, body)

    def retry_rejected(self) -> RunResult:
        """Re-read the current source rows of every rejected contact and send them again."""

        def body(run: _Delivery) -> None:
            keys = [r.source_key for r in self.store.list_rejections(self.name)]
            differ = Differ(self.build_mapper(create_lists=True), resend=True)
            with self.open_connector() as connector:
                self._scan(connector.fetch(keys), differ, run)
            run.finish()

        return self._execute(RunKind.RETRY, body, advance=False)

    def plan(self, *, sample: int = 5, state: Any = None) -> PlanReport:
        """What a sync would send now; sends nothing and writes nothing."""
        state = state or self.store
        report = PlanReport(self.name)
        mapper = self.build_mapper(create_lists=False, report=report)
        sink = _Counter(report, self.pipeline.batch_size, sample)
        with self.open_connector() as connector:
            records = connector.read(state.get_watermark(self.name))
            self._scan(records, Differ(mapper), sink, state=state)
        report.imports = sink.imports()
        return report

    # the run's frame ---------------------------------------------------------------------
    def _execute(
        self, kind: RunKind, body: Callable[[_Delivery], None], *, advance: bool = True
    ) -> RunResult:
        started = time.monotonic()
        with self._lease():
            self.store.interrupt_stale_runs(self.name)
            run_id = self.store.start_run(self.name, kind)
            result = RunResult(self.name, kind, RunOutcome.RUNNING, {}, run_id)
            with structlog.contextvars.bound_contextvars(pipeline=self.name, run_id=run_id):
                log.info("run.started", kind=str(kind))
                delivery = _Delivery(self, run_id, result.counts, advance=advance)
                try:
                    self._recover(result.counts)
                    body(delivery)
                    result.outcome = RunOutcome.SUCCEEDED
                except Interrupted as exc:
                    result.outcome, result.error = RunOutcome.INTERRUPTED, str(exc)
                except SyncError as exc:
                    result.outcome, result.error = RunOutcome.FAILED, str(exc)
                except Exception as exc:
                    log.exception("run.crashed")
                    result.outcome, result.error = RunOutcome.FAILED, f"internal error: {exc!r}"
                result.duration_s = time.monotonic() - started
                self.store.finish_run(run_id, result.outcome, result.counts, result.error)
                log.info("run.finished", outcome=str(result.outcome), error=result.error,
                         duration_s=round(result.duration_s, 3), **result.counts)
        return result

    @contextmanager
    def _lease(self) -> Iterator[None]:
        if not self.store.acquire_lease(self.name, self.owner, self.lease_ttl):
            holder = self.store.lease_holder(self.name)
            who = holder[0] if holder else "another process"
            raise PipelineBusy(f"pipeline {self.name} is busy: its lease is held by {who}")
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(done,), daemon=True,
                                name=f"lease-{self.name}")
        beat.start()
        try:
            yield
        finally:
            done.set()
            beat.join(timeout=5)
            self.store.release_lease(self.name, self.owner)

    def _heartbeat(self, done: threading.Event) -> None:
        while not done.wait(self.lease_ttl / 4):
            try:
                renewed = self.store.renew_lease(self.name, self.owner, self.lease_ttl)
            except SyncError as exc:
                log.warning("lease.renew_failed", pipeline=self.name, error=str(exc))
                continue
            if not renewed:
                log.error("lease.lost", pipeline=self.name)
                self._lease_lost.set()
                return

    def check_stop(self) -> None:
        if self._lease_lost.is_set():
            raise Interrupted("the pipeline's lease was lost; another process may run it")
        if self.stop.is_set():
            raise Interrupted("stop requested")

    def _stopping(self) -> bool:
        return self.stop.is_set() or self._lease_lost.is_set()

    # preparation ---------------------------------------------------------------------------
    @contextmanager
    def open_connector(self) -> Iterator[Connector]:
        factory = load_connector(self.pipeline.source.connector)
        connector = factory(self.pipeline.source)
        try:
            connector.check()
            yield connector
        finally:
            connector.close()

    def build_mapper(self, *, create_lists: bool, report: PlanReport | None = None) -> Mapper:
        list_ids = self._resolve_lists(create=create_lists, report=report)
        field_types = {f.merge_tag: f.data_type for f in self.client.fields()}
        try:
            return Mapper(email_column=self.pipeline.mapping.email,
                          fields=self.pipeline.mapping.fields,
                          field_types=field_types, list_ids=list_ids)
        except ConfigError as exc:
            raise ConfigError(f"pipeline {self.name}: {exc}") from exc

    def _resolve_lists(self, *, create: bool, report: PlanReport | None) -> tuple[int, ...]:
        existing = self.client.lists()
        by_name = {item.name: item.id for item in existing}
        by_fold = {item.name.casefold(): item.id for item in existing}
        ids: list[int] = []
        for wanted in self.pipeline.lists:
            if isinstance(wanted, int):
                if wanted not in by_name.values():
                    raise ConfigError(f"pipeline {self.name}: lists: no Mailtrap list has id "
                                      f"{wanted}")
                ids.append(wanted)
            elif (found := by_name.get(wanted, by_fold.get(wanted.casefold()))) is not None:
                ids.append(found)
            elif create:
                created = self.client.create_list(wanted)
                log.info("list.created", pipeline=self.name, list=wanted, list_id=created.id)
                ids.append(created.id)
            elif report is not None:
                report.lists_to_create.append(wanted)
        return tuple(ids)

    # reading and deciding -----------------------------------------------------------------
    def _scan(
        self, records: Iterable[SourceRecord], differ: Differ, sink: _Sink, *, state: Any = None
    ) -> None:
        state = state or self.store
        checked = False
        for chunk in chunked(records, READ_CHUNK):
            self.check_stop()
            if not checked:
                self._check_columns(chunk[0])
                checked = True
            mapped = differ.map(chunk)
            stored: dict[str, StoredContact] = state.get_contacts(
                self.name, [m.record.key_str for m in mapped])
            emails = [m.contact.email for m in mapped if m.contact is not None]
            owners: dict[str, str] = state.get_owners(self.name, emails)
            sink.accept(differ.diff(mapped, stored, owners, sink.pending()))
            if self.observer is not None:
                self.observer.records_read(self.name, len(chunk))

    def _check_columns(self, record: SourceRecord) -> None:
        mapping = self.pipeline.mapping
        wanted = [mapping.email, *mapping.fields.values()]
        missing = sorted({c for c in wanted if c not in record.values})
        if missing:
            raise ConfigError(
                f"pipeline {self.name}: mapping names source columns that the source does not "
                f"return: {', '.join(missing)} (it returns: {', '.join(sorted(record.values))})"
            )

    # delivery ------------------------------------------------------------------------------
    def _recover(self, counts: dict[str, int]) -> None:
        """Finish what a previous, interrupted run left: poll known imports, drop the rest."""
        for batch in self.store.open_batches(self.name):
            if batch.status is BatchStatus.POSTED and batch.import_id is not None:
                log.info("recovery.polling", batch_id=batch.id, import_id=batch.import_id)
                final = self._wait(batch.import_id)
                self._settle(batch.id, final, None, counts)
            else:
                self.store.fail_batch(batch.id, "never got an import id; contacts are re-read "
                                      "from the source", status=BatchStatus.ABANDONED)
                log.info("recovery.abandoned", batch_id=batch.id)

    def deliver(self, run_id: int, entries: list[ImportEntry], watermark: Position | None,
                counts: dict[str, int]) -> None:
        """Send one batch: record, post, poll, commit; split and retry an import that fails."""
        parts, failures = [entries], 0
        while parts:
            part = parts.pop(0)
            self.check_stop()
            batch_id = self.store.record_batch(self.name, run_id, part)
            part, import_id = self._post(batch_id, run_id, part, counts)
            if import_id is None:
                if not parts and watermark is not None:
                    self.store.set_watermark(self.name, watermark)
                continue
            final = self._wait(import_id)
            if self._settle(batch_id, final, None if parts else watermark, counts):
                continue
            failures += 1
            if failures >= MAX_IMPORT_FAILURES:
                raise ImportFailed(f"import {import_id} failed {failures} times; its "
                                   f"{len(part)} contacts will be sent again on the next run")
            half = len(part) // 2
            parts[:0] = [part[:half], part[half:]] if failures >= 2 and half else [part]

    def _post(self, batch_id: int, run_id: int, part: list[ImportEntry],
              counts: dict[str, int]) -> tuple[list[ImportEntry], int | None]:
        """POST the import; take out contacts Mailtrap rejects (422) and post the rest."""
        while part:
            try:
                created = self.client.create_import([e.to_api() for e in part])
            except MailtrapValidationError as exc:
                part = self._reject(batch_id, run_id, part, exc, counts)
                continue
            self.store.mark_batch_posted(batch_id, created.id)
            log.info("import.posted", batch_id=batch_id, import_id=created.id, size=len(part))
            return part, created.id
        self.store.fail_batch(batch_id, "every contact was rejected by Mailtrap")
        return part, None

    def _reject(self, batch_id: int, run_id: int, part: list[ImportEntry],
                exc: MailtrapValidationError, counts: dict[str, int]) -> list[ImportEntry]:
        bad = exc.contact_errors
        rejected = [e for e in part if e.email in bad]
        if not rejected:
            raise SyncError(f"Mailtrap refused the import without naming a contact: {exc}")
        self.store.record_rejections(self.name, run_id, [
            Rejection(e.source_key, e.email, RejectKind.MAILTRAP, "; ".join(bad[e.email]))
            for e in rejected])
        self.store.remove_from_batch(batch_id, [e.email for e in rejected])
        counts["rejected"] = counts.get("rejected", 0) + len(rejected)
        log.warning("import.contacts_rejected", batch_id=batch_id, count=len(rejected))
        return [e for e in part if e.email not in bad]

    def _wait(self, import_id: int) -> ImportResult:
        cfg = self.settings.mailtrap
        with structlog.contextvars.bound_contextvars(import_id=import_id):
            final = self.client.wait_for_import(
                import_id, interval=cfg.poll_interval, max_interval=cfg.poll_max_interval,
                timeout=cfg.import_timeout, should_stop=self._stopping)
        if final is None:
            raise Interrupted(f"stopped while import {import_id} was running; "
                              "the next run polls it")
        if self.observer is not None:
            self.observer.import_done(self.name, final)
        return final

    def _settle(self, batch_id: int, final: ImportResult, watermark: Position | None,
                counts: dict[str, int]) -> bool:
        """Commit a finished import; record a failed one. True when committed."""
        over = final.contacts_over_limit_count or 0
        if final.status == "finished" and over == 0:
            self.store.confirm_batch(batch_id, final, watermark)
            _add(counts, "imports", 1)
            _add(counts, "sent", (final.created_contacts_count or 0)
                 + (final.updated_contacts_count or 0))
            log.info("import.finished", batch_id=batch_id, import_id=final.id,
                     created=final.created_contacts_count, updated=final.updated_contacts_count)
            return True
        if over:
            reason = (f"Mailtrap's contact quota is full: {over} contacts were not stored "
                      f"(import {final.id}); nothing of this batch is confirmed")
            self.store.fail_batch(batch_id, reason)
            _add(counts, "over_limit", over)
            log.error("import.over_limit", batch_id=batch_id, import_id=final.id, over_limit=over)
            raise ImportFailed(reason)
        self.store.fail_batch(batch_id, f"import {final.id} ended {final.status}")
        _add(counts, "imports_failed", 1)
        log.warning("import.failed", batch_id=batch_id, import_id=final.id)
        return False


def _add(counts: dict[str, int], key: str, value: int) -> None:
    counts[key] = counts.get(key, 0) + value


class _Sink(Protocol):
    def pending(self) -> dict[str, str]: ...

    def accept(self, changes: Sequence[Change]) -> None: ...


_KIND_COUNT = {
    ChangeKind.CREATE: "created", ChangeKind.UPDATE: "updated",
    ChangeKind.EMAIL_CHANGE: "email_changed", ChangeKind.UNLIST: "unlisted",
    ChangeKind.UNCHANGED: "unchanged",
}


def _count_change(counts: dict[str, int], change: Change) -> None:
    _add(counts, "read", 1)
    if change.rejection is not None:
        key = {RejectKind.DUPLICATE: "duplicate"}.get(change.rejection.kind, "invalid")
        _add(counts, key, 1)
    elif change.kind is not None:
        _add(counts, _KIND_COUNT[change.kind], 1)


class _Delivery:
    """Builds batches from changes in order and hands each full one to the job."""

    def __init__(self, job: SyncJob, run_id: int, counts: dict[str, int], *,
                 advance: bool) -> None:
        self.job, self.run_id, self.counts, self.advance = job, run_id, counts, advance
        self.floor = job.store.get_watermark(job.name) if advance else None
        self.entries: list[ImportEntry] = []
        self.emails: dict[str, str] = {}
        self.last_done: Position | None = None
        self.size = job.pipeline.batch_size

    def pending(self) -> dict[str, str]:
        return self.emails

    def accept(self, changes: Sequence[Change]) -> None:
        rejections = [c.rejection for c in changes if c.rejection is not None]
        if rejections:
            self.job.store.record_rejections(self.job.name, self.run_id, rejections)
        for change in changes:
            _count_change(self.counts, change)
            for entry in change.entries:
                if len(self.entries) >= self.size or entry.email in self.emails:
                    self.flush()
                self.entries.append(entry)
                self.emails[entry.email] = entry.source_key
            self.last_done = change.position
            if len(self.entries) >= self.size:
                self.flush()

    def flush(self) -> None:
        if self.entries:
            entries, self.entries, self.emails = self.entries, [], {}
            self.job.deliver(self.run_id, entries, self._advance_to(self.last_done), self.counts)

    def finish(self) -> None:
        if self.entries:
            self.flush()
        elif (mark := self._advance_to(self.last_done)) is not None:
            self.job.store.set_watermark(self.job.name, mark)

    def _advance_to(self, position: Position | None) -> Position | None:
        """``position`` if the watermark may move to it (forward only), else None."""
        if not self.advance or position is None:
            return None
        if self.floor is not None and not _ahead(position, self.floor):
            return None
        self.floor = position
        return position


def _ahead(a: Position, b: Position) -> bool:
    try:
        return bool((a.cursor, a.key) > (b.cursor, b.key))
    except TypeError:
        return True


class _Counter:
    """The plan's sink: counts by kind of change and keeps a sample of each; sends nothing."""

    def __init__(self, report: PlanReport, batch_size: int, sample: int) -> None:
        self.report, self.batch_size, self.sample = report, batch_size, sample
        self.entries = 0
        self.emails: dict[str, str] = {}

    def pending(self) -> dict[str, str]:
        return self.emails

    def accept(self, changes: Sequence[Change]) -> None:
        for change in changes:
            _count_change(self.report.counts, change)
            label = (str(change.rejection.kind) if change.rejection is not None
                     else str(change.kind))
            examples = self.report.samples.setdefault(label, [])
            if change.kind is not ChangeKind.UNCHANGED and len(examples) < self.sample:
                examples.append(_sample(change))
            for entry in change.entries:
                if self.entries % self.batch_size == 0:
                    self.emails.clear()  # a new batch: duplicates are looked for per batch
                self.entries += 1
                self.emails[entry.email] = entry.source_key

    def imports(self) -> int:
        return -(-self.entries // self.batch_size)


def _sample(change: Change) -> dict[str, Any]:
    if change.rejection is not None:
        return {"source_key": change.source_key, "email": change.rejection.email,
                "reason": change.rejection.reason}
    return {"source_key": change.source_key,
            "contacts": [entry.to_api() for entry in change.entries]}
