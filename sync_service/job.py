"""One pipeline pass: read → diff → deliver (record batch → post import → poll → commit).

This is the only place where the connector, the diff, the state store and the Mailtrap client
meet; sending is delegated to ``delivery`` (its docstring says how invariants 1, 3 and 8 are
kept there). What this module adds:

2. Nothing unchanged is sent, and every change is judged against the newest state: records
   are mapped and hashed and compared with the state store a chunk at a time (``Differ``). A
   key read again while its earlier row is still queued (in the batch being built or in an
   import in flight; a row edited while the run reads comes back later in the same run) makes
   the job send what is queued, wait until it is confirmed, and look the state up again, so
   the later row is diffed against what Mailtrap confirmed for the earlier one: a key appears
   at most once per import, the newest row wins, and every address the key held is unlisted.
   After every change of confirmed state, the rest of the chunk is looked up again.
   A key read twice in one run is checked against the source (``Connector.fetch``): if the
   source holds two rows for it, the later one is rejected as ``duplicate_key`` (issue 8).
7. One pipeline in one place: the run holds the pipeline's lease and renews it; every write the
   run makes to the state store checks the lease's generation in the same transaction (a
   fencing token, see ``state.leases``), and a run whose renewals have failed for ``lease_ttl``
   stops before posting anything more. A holder that died (SIGKILL) is noticed through the
   ``HolderLock`` it held, and its lease is taken over at once; ``lease_ttl`` (setting, default
   60 s) stays the last resort for a holder that is alive but cut off (``lease.LeaseKeeper``).
8. ``retry`` re-reads the current source rows of rejected contacts and sends them again; a
   contact Mailtrap refused is otherwise not posted again until its row changes.
9. Identities never get stuck: an address belongs to a live key only (the source row of a key
   that holds an address another key claims is fetched to see whether it still has it), and at
   the end of a sync the keys rejected as duplicates whose address was let go are fetched and
   sent.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from sync_service import consent, deletions, events, reconcile, reread
from sync_service.connector import Connector, in_order, load_connector
from sync_service.delivery import BatchBuilder, Courier, Sink, count_change
from sync_service.diff import Change, Differ, Mapped, OnRecord, Pending, View
from sync_service.errors import (
    ConfigError,
    Interrupted,
    LeaseLost,
    MassDeleteHeld,
    Stopped,
    SyncError,
)
from sync_service.fields import create_fields, plan_fields
from sync_service.lease import LeaseKeeper
from sync_service.mailtrap.client import ContactList, MailtrapClient
from sync_service.mapping import Mapper
from sync_service.memberships import Memberships
from sync_service.models import (
    ChangeKind,
    Position,
    Rejection,
    RejectKind,
    RunKind,
    RunOutcome,
    SourceRecord,
    StoredContact,
)
from sync_service.models import chunked as chunked  # noqa: PLC0414 - old home
from sync_service.observers import RunObserver  # in __all__: its old home was this module
from sync_service.preflight import check_mapped_columns
from sync_service.settings import AppSettings, ListsByColumn, PipelineSettings
from sync_service.state import StateReader, StateStore

log = structlog.get_logger(__name__)
READ_CHUNK = 2_000
__all__ = ["PlanReport", "RunObserver", "RunResult", "SyncJob", "chunked", "new_owner"]


@dataclass
class RunResult:
    pipeline: str
    kind: RunKind
    outcome: RunOutcome
    counts: dict[str, int]
    run_id: int | None = None
    error: str | None = None
    duration_s: float = 0.0
    config_error: bool = False  # the run failed on configuration: the CLI exits 2


@dataclass
class PlanReport:
    pipeline: str
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    imports: int = 0
    lists_to_create: list[str] = field(default_factory=list)
    fields_to_create: list[str] = field(default_factory=list)
    deletions: int = 0  # tracked keys a key scan finds gone from the source now
    brake_would_hold: bool = False


def new_owner() -> str:
    """A lease owner id naming this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        self.lease_ttl = lease_ttl if lease_ttl is not None else settings.lease_ttl
        self._keeper = LeaseKeeper(store, self.name, self.owner, self.lease_ttl)
        self._connector: Connector | None = None
        self._screen: Callable[[Change], Change] = consent.unchanged  # set per chunk by _scan
        self._fingerprint: str | None = None  # of the last mapper built (sync_service.reread)
        self._skipped: set[int] = set()  # indices of the chunk the re-read skip accepts
        self._seen: dict[str, reread.Seen] = {}  # the re-read skip's look-up for the chunk
        self.rereads_skipped = 0  # rows the re-read skip accepted unmapped, in the last scan

    # entry points ------------------------------------------------------------------------
    def run(self, kind: RunKind = RunKind.SYNC, *, resend: bool = False,
            allow_mass_delete: bool = False) -> RunResult:
        """One incremental pass (SYNC) or a full re-read (BACKFILL); raises PipelineBusy.

        Deletions (a key scan when due, a snapshot's vanished keys) come last, after every
        other change is confirmed; the mass-delete brake holds them unless
        ``allow_mass_delete`` (the run then fails with ``MassDeleteHeld``: exit 1)."""

        def body(run: BatchBuilder) -> None:
            differ = Differ(self.build_mapper(create_lists=True), resend=resend)
            since = None if kind is RunKind.BACKFILL else self.store.get_watermark(self.name)
            with self.open_connector() as connector:
                reconcile.resend_drifted(self, connector, differ, run)  # consent branch
                self._scan(in_order(connector.read(since), connector), differ, run,
                           connector=connector,
                           skip=kind is RunKind.SYNC and not resend and self.pipeline.skip_rereads)
                _add_count(run.courier.counts, "rereads_skipped", self.rereads_skipped)
                run.finish()
                self._recheck_duplicates(connector, differ, run)
                scan = (kind is RunKind.BACKFILL or allow_mass_delete
                        or deletions.scan_due(self.store, self.pipeline))
                held = self._deletions(connector, differ, run, scan=scan,
                                       allow=allow_mass_delete)
            consent.apply(self, run.courier.counts)  # consent branch: opt-outs, then events
            events.drain(self, run.courier.counts)
            if held is not None:  # the brake: raised once every other step is done
                raise MassDeleteHeld(held)

        return self._execute(kind, body)

    def retry_rejected(self) -> RunResult:
        """Re-read the current source rows of every rejected contact and send them again."""

        def body(run: BatchBuilder) -> None:
            keys = [r.source_key for r in self.store.list_rejections(self.name)]
            differ = Differ(self.build_mapper(create_lists=True), resend=True)
            with self.open_connector() as connector:
                self._scan(connector.fetch(keys), differ, run, connector=connector)
                run.finish()

        return self._execute(RunKind.RETRY, body, advance=False)

    def plan(self, *, sample: int = 5, state: StateReader | None = None) -> PlanReport:
        """What a sync would send now; sends nothing and writes nothing."""
        state = state or self.store
        report = PlanReport(self.name)
        mapper = self.build_mapper(create_lists=False, report=report)
        sink = _Counter(report, self.pipeline.batch_size, sample)
        with self.open_connector() as connector:
            records = connector.read(state.get_watermark(self.name))
            self._scan(records, Differ(mapper), sink, state=state, connector=connector,
                       skip=self.pipeline.skip_rereads)
            _add_count(report.counts, "rereads_skipped", self.rereads_skipped)
            found = deletions.find(state, self.name, connector, scan=True,
                                   seen_deleted=getattr(connector, "deleted_keys", ()))
        report.imports = sink.imports()
        report.deletions = len(found.gone)
        report.brake_would_hold = (self.pipeline.on_delete != "ignore" and deletions.brake(
            self.pipeline, len(found.gone), found.tracked) is not None)
        events.plan(self, report, state, sample)  # consent branch
        return report

    # the run's frame ---------------------------------------------------------------------
    def _execute(
        self, kind: RunKind, body: Callable[[BatchBuilder], None], *, advance: bool = True
    ) -> RunResult:
        started = time.monotonic()
        base = self.store
        with self._keeper.held() as fenced, self.client.stoppable(self._stopping):
            self.store = fenced  # every write of the run checks the lease's generation
            try:
                self.store.interrupt_stale_runs(self.name)
                run_id = self.store.start_run(self.name, kind)
                result = RunResult(self.name, kind, RunOutcome.RUNNING, {}, run_id)
                with structlog.contextvars.bound_contextvars(pipeline=self.name, run_id=run_id):
                    log.info("run.started", kind=str(kind))
                    self._attempt(run_id, result, body, advance=advance)
                    result.duration_s = time.monotonic() - started
                    self._finish(run_id, result)
            finally:
                self.store = base
        return result

    def _finish(self, run_id: int, result: RunResult) -> None:
        try:
            self.store.finish_run(run_id, result.outcome, result.counts, result.error)
        except LeaseLost as exc:
            # The run that took over marked this one interrupted; nothing more may be written.
            result.outcome, result.error = RunOutcome.FAILED, str(exc)
        # A failed run is an error in the log (alerting on level works); others info.
        emit = log.error if result.outcome is RunOutcome.FAILED else log.info
        emit("run.finished", outcome=str(result.outcome), error=result.error,
             duration_s=round(result.duration_s, 3), **result.counts)

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
        except Stopped as exc:
            result.outcome, result.error = RunOutcome.INTERRUPTED, str(exc)
        except ConfigError as exc:
            result.outcome, result.error = RunOutcome.FAILED, str(exc)
            result.config_error = True
        except SyncError as exc:
            result.outcome, result.error = RunOutcome.FAILED, str(exc)
        except Exception as exc:
            log.exception("run.crashed")
            result.outcome, result.error = RunOutcome.FAILED, f"internal error: {exc!r}"

    def check_stop(self) -> None:
        if self._keeper.lost():
            raise LeaseLost(f"pipeline {self.name}: the lease was lost or could not be renewed "
                            f"for {self.lease_ttl:g} s; another process may run it, so nothing "
                            "more is posted")
        if self.stop.is_set():
            raise Interrupted("stop requested")

    def _stopping(self) -> bool:
        return self.stop.is_set() or self._keeper.lost()

    # preparation ---------------------------------------------------------------------------
    @contextmanager
    def open_connector(self) -> Iterator[Connector]:
        factory = load_connector(self.pipeline.source.connector)
        connector = factory(self.pipeline.source)
        try:
            connector.check()
            check_mapped_columns(self.pipeline, connector)
            yield connector
        finally:
            connector.close()

    def build_mapper(self, *, create_lists: bool, report: PlanReport | None = None) -> Mapper:
        """The pipeline's mapper. Missing declared fields and lists are created
        (``create_lists``) only once the fields and the source have passed their checks, so a
        run failing on configuration creates nothing."""
        fields = plan_fields(self.pipeline, self.client.fields())

        rules = self.pipeline.lists_by_column
        dynamic: list[str | int] = list(rules.names) if rules is not None else []
        wanted: list[str | int] = [*self.pipeline.lists, *dynamic]

        def mapper(by_name: Mapping[str | int, int]) -> Mapper:
            static = tuple(by_name[w] for w in self.pipeline.lists if w in by_name)
            memberships = _memberships(rules, by_name) if rules is not None else None
            self._fingerprint = reread.fingerprint(self.pipeline, fields.types, by_name)
            try:
                return Mapper(email_column=self.pipeline.mapping.email,
                              fields=self.pipeline.mapping.columns,
                              field_types=fields.types, list_ids=static,
                              memberships=memberships,
                              managed=memberships.ids if memberships is not None else ())
            except ConfigError as exc:
                raise ConfigError(f"pipeline {self.name}: {exc}") from exc

        mapper({})  # the fields, before any field or list is created
        existing = self.client.lists()
        missing = PlanReport(self.name)
        found = self._resolve_lists(wanted, existing, create=False, report=missing)
        if not (create_lists and (missing.lists_to_create or fields.to_create)):
            if report is not None:
                report.lists_to_create.extend(missing.lists_to_create)
                report.fields_to_create.extend(
                    f"{f.merge_tag} ({f.data_type})" for f in fields.to_create)
            return mapper(found)
        with self.open_connector():  # the source's checks, before anything is created
            pass
        create_fields(self.client, self.pipeline, fields)
        return mapper(self._resolve_lists(wanted, existing, create=True, report=report))

    def _resolve_lists(self, wanted_lists: Sequence[str | int], existing: Sequence[ContactList],
                       *, create: bool, report: PlanReport | None) -> dict[str | int, int]:
        """Wanted list (name or id) → its id; a missing name is created (``create``) or named
        in ``report``, and absent from the answer."""
        by_name = {item.name: item.id for item in existing}
        by_fold = {item.name.casefold(): item.id for item in existing}
        ids: dict[str | int, int] = {}
        for wanted in dict.fromkeys(wanted_lists):
            if isinstance(wanted, int):
                if wanted not in by_name.values():
                    raise ConfigError(f"pipeline {self.name}: lists: no Mailtrap list has id "
                                      f"{wanted}")
                ids[wanted] = wanted
            elif (found := by_name.get(wanted, by_fold.get(wanted.casefold()))) is not None:
                ids[wanted] = found
            elif create:
                created = self.client.create_list(wanted)
                log.info("list.created", pipeline=self.name, list=wanted, list_id=created.id)
                ids[wanted] = by_name[wanted] = by_fold[wanted.casefold()] = created.id
            elif report is not None:
                report.lists_to_create.append(wanted)
        return ids

    # reading and deciding -----------------------------------------------------------------
    def _scan(
        self, records: Iterable[SourceRecord], differ: Differ, sink: Sink, *,
        state: StateReader | None = None, connector: Connector | None = None,
        check_columns: bool = True, skip: bool = False,
    ) -> None:
        """Read, decide and hand changes to ``sink``; ``connector`` is asked for the current
        rows of keys whose ownership or uniqueness is in doubt. ``skip``: rows read again at
        the cursor value their confirmed state was made from are accepted unmapped
        (``sync_service.reread``), and the tokens of the rows mapped are stored."""
        state = state or self.store
        self._connector = connector
        checked = not check_columns
        lookup = getattr(state, "reread_tokens", None) if skip else None
        fingerprint = self._fingerprint
        self.rereads_skipped = 0  # a job object may run again: never carry a count over
        for chunk in chunked(records, READ_CHUNK):
            self.check_stop()
            if not checked:
                self._check_columns(chunk[0])
                checked = True
            seen = self._seen = {}
            self._skipped = set()
            if lookup is not None and fingerprint is not None:
                seen = self._seen = lookup(self.name, [r.key_str for r in chunk
                                          if not r.deleted and r.cursor is not None])
                self._skipped = reread.candidates(fingerprint, chunk, seen,
                                                  pending=sink.pending,
                                                  sent_in_run=sink.sent_in_run)
            mapped = self._map(chunk, differ)
            # The pipeline's consent rules for this chunk (consent.py), applied to each change.
            self._screen = consent.screener(self, self._unskipped(mapped), state=state)
            start, verified = 0, -1
            while start < len(mapped):
                start, verified = self._decide(mapped, (start, verified), differ, sink, state)
            if lookup is not None and fingerprint is not None and state is self.store:
                self.store.note_reread(self.name, reread.to_note(
                    fingerprint, self._unskipped(mapped), seen))
            self._skipped = set()
            if self.observer is not None:
                self.observer.records_read(self.name, len(chunk))

    def _unskipped(self, mapped: list[Mapped], start: int = 0) -> list[Mapped]:
        """The mapped rows from ``start`` on that the re-read skip did not accept (no copy of
        the list is filtered row by row when it accepted none)."""
        if not self._skipped:
            return mapped[start:]
        return [m for i, m in enumerate(mapped[start:], start) if i not in self._skipped]

    def _map(self, chunk: Sequence[SourceRecord], differ: Differ) -> list[Mapped]:
        """The chunk mapped, except the rows the re-read skip accepts (left unmapped)."""
        if not self._skipped:
            return differ.map(chunk)
        rest = iter(differ.map([r for i, r in enumerate(chunk) if i not in self._skipped]))
        return [Mapped(r) if i in self._skipped else next(rest) for i, r in enumerate(chunk)]

    def _decide(self, mapped: list[Mapped], at: tuple[int, int], differ: Differ, sink: Sink,
                state: Any) -> tuple[int, int]:
        """Decide records from ``start`` on against one look-up of the state.

        Returns where to go on (and the index whose repeat check is done) as soon as a batch was
        sent, since the state looked up no longer describes what Mailtrap confirmed.
        """
        start, verified = at
        sink.settle()  # rejections accepted so far are on record before the state is read
        todo = self._unskipped(mapped, start)
        # Only skipped rows left: no look-up (their decision needs none).
        view = self._look_up(todo, differ, state, sink.pending) if todo else View()
        flushes = sink.flushes
        index = start
        while index < len(mapped):
            if index in self._skipped:
                # A run of skipped rows, accepted at once: accepting an unchanged row queues
                # nothing, so each row of the run is as clear as it was at the run's start.
                end = index
                while end in self._skipped and self._still_skipped(mapped[end], sink):
                    end += 1
                if end > index:
                    sink.accept_unchanged(end - index, mapped[end - 1].record.position)
                    self.rereads_skipped += end - index
                    index = end
                    continue
                mapped[index] = differ.map([mapped[index].record])[0]  # busy now: decide it
                self._skipped.discard(index)  # fully, against a look-up that includes it
                return index, -1
            item = mapped[index]
            key = item.record.key_str
            if index != verified and self._repeated(item, view, sink):
                verdict = self._source_rows(item, differ, sink)
                if verdict is not None:
                    sink.accept([self._screen(verdict)])
                    index += 1
                    continue
                if key in sink.pending.keys:
                    sink.flush()  # the earlier row goes out first; look the state up again
                    return index, index
            sink.accept([self._screen(differ.decide(item, view, sink.pending))])
            index += 1
            if sink.flushes != flushes:
                return index, -1
        return len(mapped), -1

    def _still_skipped(self, item: Mapped, sink: Sink) -> bool:
        """Whether a row the re-read skip picked at the chunk's start is still clear of what
        the run has queued since (``reread.candidates`` checked it against the queue then)."""
        key = item.record.key_str
        return key not in sink.pending.keys and self._seen[key].email not in sink.pending.emails

    def _repeated(self, item: Mapped, view: View, sink: Sink) -> bool:
        """Whether this run already read the key, or its source had two rows for it before."""
        key = item.record.key_str
        if key in sink.pending.keys:
            return True
        stored = view.stored.get(key)
        if stored is not None and sink.sent_in_run(stored.import_id):
            return True
        on_record = view.rejections.get(key)
        return on_record is not None and on_record.kind is RejectKind.DUPLICATE_KEY

    def _source_rows(self, item: Mapped, differ: Differ, sink: Sink) -> Change | None:
        """A ``duplicate_key`` rejection if the source has another, earlier row for this key."""
        record = item.record
        key = record.key_str
        if self._connector is None:
            return None
        rows = list(self._connector.fetch([key]))
        if len(rows) < 2:
            sink.resolved([key])
            return None
        first = _first_row(rows)
        if first.cursor == record.cursor and dict(first.values) == dict(record.values):
            return None
        email = item.contact.email if item.contact is not None else None
        reason = (f"source key {key} is on {len(rows)} rows of the source; the first in cursor "
                  "order is synced, this later one is not")
        log.warning("source.duplicate_key", source_key=key, rows=len(rows))
        return Change(record.position, key, None, rejection=Rejection(
            key, email, RejectKind.DUPLICATE_KEY, reason))

    def _look_up(self, mapped: list[Mapped], differ: Differ, state: Any, pending: Pending
                 ) -> View:
        """The confirmed state for these records, and which holders of claimed addresses are
        still live in the source."""
        keys = [m.record.key_str for m in mapped]
        stored: dict[str, StoredContact] = state.get_contacts(self.name, keys)
        claimed: dict[str, set[str]] = {}
        for m in mapped:
            if m.contact is not None:
                claimed.setdefault(m.contact.email, set()).add(m.record.key_str)
        left = [s.email for s in stored.values()]
        holders: dict[str, list[str]] = state.get_holders(self.name, [*claimed, *left])
        found: dict[str, Rejection] = state.get_rejections(self.name, keys)
        rejections = {k: OnRecord(r.kind, r.hash) for k, r in found.items()}
        # A holder read in this stretch with the address still has it; any other is checked.
        suspects = {k for email, claimants in claimed.items() for k in holders.get(email, ())
                    if k not in claimants and k not in pending.keys}
        return View(stored=stored, holders=holders, rejections=rejections,
                    live=self._live_addresses(sorted(suspects), differ))

    def _live_addresses(self, keys: Sequence[str], differ: Differ) -> dict[str, set[str]]:
        """Key → the addresses its current source rows map to (empty when gone or deleted)."""
        live: dict[str, set[str]] = {key: set() for key in keys}
        if not keys or self._connector is None:
            return live
        for item in differ.map(self._connector.fetch(list(keys))):
            if item.contact is not None and item.record.key_str in live:
                live[item.record.key_str].add(item.contact.email)
        return live

    def _recheck_duplicates(self, connector: Connector, differ: Differ, run: BatchBuilder
                            ) -> None:
        """Send the keys refused as duplicates whose address has been let go (invariant 9)."""
        released = self.store.released_duplicates(self.name)
        if not released:
            return
        log.info("duplicates.released", count=len(released))
        run.advance = False  # fetched rows are not in cursor order: the watermark stays put
        self._scan(connector.fetch(released), differ, run, connector=connector)
        run.finish()

    # hard deletes ---------------------------------------------------------------------------
    def _deletions(self, connector: Connector, differ: Differ, run: BatchBuilder, *,
                   scan: bool, allow: bool) -> str | None:
        """Find the tracked keys gone from the source and apply ``on_delete`` to them, unless
        the mass-delete brake holds them: then none is applied and the brake's message is
        returned (the run raises ``MassDeleteHeld`` once its other steps are done)."""
        counts = run.courier.counts
        found = deletions.find(self.store, self.name, connector, scan=scan,
                               seen_deleted=getattr(connector, "deleted_keys", ()))
        if found.scanned:
            log.info("deletions.key_scan", tracked=found.tracked, gone=len(found.gone))
        policy = self.pipeline.on_delete
        if found.gone and policy == "ignore":
            counts["deletions_ignored"] = len(found.gone)
        elif found.gone:
            held = deletions.brake(self.pipeline, len(found.gone), found.tracked)
            if held is not None and not allow:
                counts["deletions_held"] = len(found.gone)
                log.warning("deletions.held", count=len(found.gone), tracked=found.tracked)
                return held
            if policy == "delete":
                deletions.hard_delete(self.store, self.client, self.name, found.gone, counts,
                                      check_stop=self.check_stop)
            else:
                self._unlist_gone(found.gone, connector, differ, run)
        if found.scanned:
            counts["key_scans"] = 1
        return None

    def _unlist_gone(self, keys: Sequence[str], connector: Connector, differ: Differ,
                     run: BatchBuilder) -> None:
        """``remove_from_lists``: each gone key goes through the diff as a deleted record."""
        run.advance = False  # these records have no place in the cursor order
        gone = (SourceRecord(key=key, cursor=None, values={}, deleted=True) for key in keys)
        self._scan(gone, differ, run, connector=connector, check_columns=False)
        run.finish()

    def _check_columns(self, record: SourceRecord) -> None:
        mapping = self.pipeline.mapping
        rules = self.pipeline.lists_by_column
        wanted = [mapping.email, *mapping.columns.values(),
                  *(rules.source_columns if rules is not None else ())]
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
        self.in_batch = 0
        self.batches = 0
        self.pending = Pending()
        self.flushes = 0

    def accept(self, changes: Sequence[Change]) -> None:
        for change in changes:
            count_change(self.report.counts, change)
            label = (str(change.rejection.kind) if change.rejection is not None
                     else str(change.kind))
            examples = self.report.samples.setdefault(label, [])
            if change.kind is not ChangeKind.UNCHANGED and len(examples) < self.sample:
                examples.append(_sample(change))
            if not change.entries:
                continue
            clash = any(e.email in self.pending.emails for e in change.entries)
            if clash or self.in_batch + len(change.entries) > self.batch_size:
                self.flush()
            self.entries += len(change.entries)
            self.in_batch += len(change.entries)
            self.pending.add(change)

    def accept_unchanged(self, count: int, last: Position) -> None:
        _add_count(self.report.counts, "read", count)
        _add_count(self.report.counts, "unchanged", count)
        self.report.samples.setdefault(str(ChangeKind.UNCHANGED), [])

    def flush(self) -> None:
        # A plan sends nothing: the next batch is judged against the state as it is now.
        if self.in_batch:
            self.batches += 1
        self.in_batch = 0
        self.pending.clear()

    def resolved(self, keys: Sequence[str]) -> None:
        pass  # a plan writes nothing

    def settle(self) -> None:
        pass  # a plan writes nothing

    def sent_in_run(self, import_id: int | None) -> bool:
        return False

    def imports(self) -> int:
        return self.batches + (1 if self.in_batch else 0)


def _sample(change: Change) -> dict[str, Any]:
    if change.rejection is not None:
        return {"source_key": change.source_key, "email": change.rejection.email,
                "reason": change.rejection.reason}
    return {"source_key": change.source_key,
            "contacts": [entry.to_api() for entry in change.entries]}


def _memberships(rules: ListsByColumn, ids: Mapping[str | int, int]) -> Memberships | None:
    """The dynamic list rules with names resolved to ids (None while a list is missing: a plan
    or check before the lists exist maps contacts onto the static lists only)."""
    names = rules.names
    if any(name not in ids for name in names):
        return None
    return Memberships(column=rules.column,
                       by_value={v: ids[n] for v, n in rules.values.items()},
                       flags={c: ids[n] for c, n in rules.flags.items()})


def _add_count(counts: dict[str, int], name: str, value: int) -> None:
    if value:
        counts[name] = counts.get(name, 0) + value


def _first_row(rows: Sequence[SourceRecord]) -> SourceRecord:
    """The row of a duplicated key that a read meets first: lowest cursor (NULL first)."""
    try:
        return min(rows, key=lambda r: (r.cursor is not None, r.cursor))
    except TypeError:
        return rows[0]
