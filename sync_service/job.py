"""One pipeline pass: read → diff → deliver (record batch → post import → poll → commit).

This is the only place where the connector, the diff, the state store and the Mailtrap client
meet; sending is delegated to ``delivery`` (its docstring says how invariants 1, 3 and 8 are
kept there). What this module adds:

2. Nothing unchanged is sent: records are mapped and hashed, and compared with the confirmed
   hashes of the state store, a chunk at a time (``Differ``).
7. One pipeline in one place: the run holds the pipeline's lease in the state store and renews
   it; if the lease is lost, nothing more is posted. A lease left by a killed process expires
   after ``lease_ttl`` (setting, default 60 s).
8. ``retry`` re-reads the current source rows of rejected contacts and sends them again.

A stop request (SIGTERM, SIGINT, daemon shutdown) is honoured between steps and cuts every wait
short (a pacing permit, a retry back-off, an import poll): no new import is posted, an import
being polled stays recorded for the next run, state is committed, and the run ends INTERRUPTED.
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

from sync_service import consent, events, reconcile
from sync_service.connector import Connector, load_connector
from sync_service.delivery import BatchBuilder, Courier, Interrupted, Sink, count_change
from sync_service.diff import Change, Differ
from sync_service.errors import ConfigError, PipelineBusy, SyncError
from sync_service.mailtrap.client import MailtrapCancelled, MailtrapClient
from sync_service.mapping import Mapper
from sync_service.models import (
    ChangeKind,
    ImportResult,
    RunKind,
    RunOutcome,
    SourceRecord,
    StoredContact,
)
from sync_service.settings import AppSettings, PipelineSettings, parse_duration
from sync_service.state import StateStore

log = structlog.get_logger(__name__)
READ_CHUNK = 2_000
__all__ = ["PlanReport", "RunObserver", "RunResult", "SyncJob", "chunked", "new_owner"]


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
        lease_ttl: float | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.name = pipeline.name
        self.store = store
        self.client = client
        self.stop = stop or threading.Event()
        self.owner = owner or new_owner()
        self.observer = observer
        self.lease_ttl = lease_ttl if lease_ttl is not None else parse_duration(settings.lease_ttl)
        self._lease_lost = threading.Event()

    # entry points ------------------------------------------------------------------------
    def run(self, kind: RunKind = RunKind.SYNC, *, resend: bool = False) -> RunResult:
        """One incremental pass (SYNC) or a full re-read (BACKFILL); raises PipelineBusy."""

        def body(run: BatchBuilder) -> None:
            differ = Differ(self.build_mapper(create_lists=True), resend=resend)
            since = None if kind is RunKind.BACKFILL else self.store.get_watermark(self.name)
            with self.open_connector() as connector:
                reconcile.resend_drifted(self, connector, differ, run)  # consent branch
                self._scan(connector.read(since), differ, run)
            run.finish()
            consent.apply(self, run.courier.counts)  # consent branch: opt-outs, then events
            events.drain(self, run.courier.counts)

        return self._execute(kind, body)

    def retry_rejected(self) -> RunResult:
        """Re-read the current source rows of every rejected contact and send them again."""

        def body(run: BatchBuilder) -> None:
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
        events.plan(self, report, state, sample)  # consent branch
        return report

    # the run's frame ---------------------------------------------------------------------
    def _execute(
        self, kind: RunKind, body: Callable[[BatchBuilder], None], *, advance: bool = True
    ) -> RunResult:
        started = time.monotonic()
        with self._lease(), self.client.stoppable(self._stopping):
            self.store.interrupt_stale_runs(self.name)
            run_id = self.store.start_run(self.name, kind)
            result = RunResult(self.name, kind, RunOutcome.RUNNING, {}, run_id)
            with structlog.contextvars.bound_contextvars(pipeline=self.name, run_id=run_id):
                log.info("run.started", kind=str(kind))
                self._attempt(run_id, result, body, advance=advance)
                result.duration_s = time.monotonic() - started
                self.store.finish_run(run_id, result.outcome, result.counts, result.error)
                log.info("run.finished", outcome=str(result.outcome), error=result.error,
                         duration_s=round(result.duration_s, 3), **result.counts)
        return result

    def _attempt(self, run_id: int, result: RunResult, body: Callable[[BatchBuilder], None], *,
                 advance: bool) -> None:
        """Recover, then run ``body``; the outcome and error go into ``result``."""
        courier = Courier(name=self.name, run_id=run_id, store=self.store, client=self.client,
                          mailtrap=self.settings.mailtrap, counts=result.counts,
                          check_stop=self.check_stop, stopping=self._stopping,
                          observer=self.observer)
        try:
            builder = BatchBuilder(courier, self.pipeline.batch_size, advance=advance)
            courier.recover()
            body(builder)
            result.outcome = RunOutcome.SUCCEEDED
        except (Interrupted, MailtrapCancelled) as exc:
            result.outcome, result.error = RunOutcome.INTERRUPTED, str(exc)
        except SyncError as exc:
            result.outcome, result.error = RunOutcome.FAILED, str(exc)
        except Exception as exc:
            log.exception("run.crashed")
            result.outcome, result.error = RunOutcome.FAILED, f"internal error: {exc!r}"

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
        self, records: Iterable[SourceRecord], differ: Differ, sink: Sink, *, state: Any = None
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
            changes = differ.diff(mapped, stored, owners, sink.pending())
            sink.accept(consent.screen(self, mapped, stored, changes, state=state))
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
            count_change(self.report.counts, change)
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
