"""Delivery of one run's changes: build batches → record → post → poll → settle, and recovery.

The job (``job.py``) reads and decides; this module sends. How it keeps design.md's invariants:

1. No change is lost: a batch's hashes and the watermark after it are committed in one
   transaction once Mailtrap reports the import ``finished`` (``StateStore.confirm_batch``); the
   watermark given with a batch is the position of the last record whose change is in it or in
   an earlier, confirmed batch. An import that ends ``failed`` or over the contact quota commits
   nothing, and the run stops there, so the watermark stays before it.
3. Crash at any instant: a batch is recorded before it is posted. ``Courier.recover`` polls every
   import a previous run got an id for (and commits it when finished) and abandons the batches
   that never got one: the unmoved watermark makes the run re-read and re-send those contacts.
8. Rejected contacts: a 422 that names contacts takes their source keys out of the batch (every
   entry of a key, so an email change is never half-applied), records each key with Mailtrap's
   reasons, and posts the rest again; the keys keep their previous hash. A 422 that names no
   contact of the batch is narrowed down by posting halves, within a small budget; a single
   contact refused that way is recorded with the message.

A failed import is posted again, then in halves, at most ``MAX_IMPORT_FAILURES`` times in all.
What to do after each answer is decided by ``delivery_plan`` (pure); the courier performs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from sync_service.delivery_plan import MAX_IMPORT_FAILURES as MAX_IMPORT_FAILURES  # noqa: PLC0414
from sync_service.delivery_plan import (
    GiveUp,
    Plan,
    failed_import_plan,
    refusal_budget,
    refusal_plan,
    result_plan,
    unattributed_plan,
)
from sync_service.diff import Change, Pending
from sync_service.errors import ImportFailed as ImportFailed  # noqa: PLC0414 - old home
from sync_service.errors import Interrupted as Interrupted  # noqa: PLC0414 - old home
from sync_service.errors import (
    MailtrapNotFound,
    MailtrapValidationError,
    SyncError,
)
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import (
    BatchStatus,
    ChangeKind,
    ImportEntry,
    ImportResult,
    Position,
    Rejection,
    RejectKind,
)
from sync_service.observers import RunObserver
from sync_service.settings import MailtrapSettings
from sync_service.state import StateStore

log = structlog.get_logger(__name__)
# Rejections a batch builder keeps before writing them in one transaction.
REJECTION_BUFFER = 5_000


class _Unattributed(SyncError):
    """Mailtrap refused an import (422) without naming any contact of ``part`` (what was left)."""

    def __init__(self, message: str, part: list[ImportEntry]) -> None:
        super().__init__(message)
        self.part = part


@dataclass
class Courier:
    """Sends the batches of one run of one pipeline; ``counts`` are the run's counters."""

    name: str
    run_id: int
    store: StateStore
    client: MailtrapClient
    mailtrap: MailtrapSettings
    counts: dict[str, int]
    check_stop: Callable[[], None]
    stopping: Callable[[], bool]
    observer: RunObserver | None = None
    # Imports this run saw finished and committed: a key confirmed by one was read in this run.
    confirmed: set[int] = field(default_factory=set)

    def recover(self) -> None:
        """Finish what a previous, interrupted run left: poll known imports, drop the rest."""
        for batch in self.store.open_batches(self.name):
            if batch.status is BatchStatus.POSTED and batch.import_id is not None:
                log.info("recovery.polling", batch_id=batch.id, import_id=batch.import_id)
                try:
                    final = self._wait(batch.import_id)
                except MailtrapNotFound:
                    self.store.fail_batch(batch.id, f"Mailtrap no longer knows import "
                                          f"{batch.import_id}; contacts are re-read from the "
                                          "source", status=BatchStatus.ABANDONED)
                    log.warning("recovery.import_unknown", batch_id=batch.id,
                                import_id=batch.import_id)
                    continue
                self._settle(batch.id, final, None, sent=batch.size)
            else:
                self.store.fail_batch(batch.id, "never got an import id; contacts are re-read "
                                      "from the source", status=BatchStatus.ABANDONED)
                log.info("recovery.abandoned", batch_id=batch.id)

    def deliver(self, entries: list[ImportEntry], watermark: Position | None,
                forget: Sequence[str] = ()) -> None:
        """Send one batch: record, post, poll, commit; the watermark (and the keys to forget)
        go with its last part."""
        if not entries:
            self.store.advance(self.name, watermark, forget)
            return
        parts, failures, refusals = [entries], 0, 0
        budget = refusal_budget(len(entries))
        while parts:
            part = parts.pop(0)
            self.check_stop()
            batch_id = self.store.record_batch(self.name, self.run_id, part)
            try:
                part, import_id = self._post(batch_id, part)
            except _Unattributed as refusal:
                refusals += 1
                parts[:0] = self._isolate(batch_id, refusal, refusals=refusals, budget=budget)
                import_id = None
            if import_id is None:
                if not parts:
                    self.store.advance(self.name, watermark, forget)
                continue
            last = not parts
            if self._settle(batch_id, self._wait(import_id), watermark if last else None,
                            forget if last else (), sent=len(part)):
                continue
            failures += 1
            plan = failed_import_plan(part, import_id, failures)
            if plan.give_up is not None:
                raise ImportFailed(plan.message)
            parts[:0] = [list(p) for p in plan.parts]

    def _post(self, batch_id: int, part: list[ImportEntry]) -> tuple[list[ImportEntry], int | None]:
        """POST the import; take out contacts Mailtrap rejects (422) and post the rest."""
        while part:
            try:
                created = self.client.create_import([e.to_api() for e in part])
            except MailtrapValidationError as exc:
                part = self._reject(batch_id, part, exc)
                continue
            self.store.mark_batch_posted(batch_id, created.id)
            log.info("import.posted", batch_id=batch_id, import_id=created.id, size=len(part))
            return part, created.id
        self.store.fail_batch(batch_id, "every contact was rejected by Mailtrap")
        return part, None

    def _reject(self, batch_id: int, part: list[ImportEntry],
                exc: MailtrapValidationError) -> list[ImportEntry]:
        """Record the keys whose entries Mailtrap named; the entries left to post again."""
        plan = refusal_plan(part, exc.contact_errors, exc.body, str(exc))
        self._give_up(batch_id, plan)
        if plan.unattributed:
            raise _Unattributed(plan.message, part)
        self.store.record_rejections(self.name, self.run_id, list(plan.rejections))
        self.store.remove_from_batch(batch_id, list(plan.removed))
        _add(self.counts, "rejected", len(plan.rejections))
        log.warning("import.contacts_rejected", batch_id=batch_id, count=len(plan.rejections),
                    reasons=list(plan.reasons))
        return list(plan.retry)

    def _isolate(self, batch_id: int, refusal: _Unattributed, *,
                 refusals: int, budget: int) -> list[list[ImportEntry]]:
        """Halves of a part refused as a whole; a lone key is recorded as rejected instead."""
        part = refusal.part
        plan = unattributed_plan(part, str(refusal), refusals=refusals, budget=budget)
        assert plan.batch_failure is not None
        self.store.fail_batch(batch_id, plan.batch_failure)
        if plan.give_up is not None:
            raise SyncError(plan.message)
        if plan.rejections:
            self.store.record_rejections(self.name, self.run_id, list(plan.rejections))
            _add(self.counts, "rejected", 1)
            log.warning("import.contact_isolated", batch_id=batch_id,
                        source_key=plan.rejections[0].source_key)
            return []
        log.warning("import.refused_unattributed", batch_id=batch_id, size=len(part))
        return [list(p) for p in plan.parts]

    def _wait(self, import_id: int) -> ImportResult:
        cfg = self.mailtrap
        with structlog.contextvars.bound_contextvars(import_id=import_id):
            final = self.client.wait_for_import(
                import_id, interval=cfg.poll_interval, max_interval=cfg.poll_max_interval,
                timeout=cfg.import_timeout, should_stop=self.stopping)
        if final is None:
            raise Interrupted(f"stopped while import {import_id} was running; "
                              "the next run polls it")
        if self.observer is not None:
            self.observer.import_done(self.name, final)
        return final

    def _settle(self, batch_id: int, final: ImportResult, watermark: Position | None,
                forget: Sequence[str] = (), *, sent: int) -> bool:
        """Commit a finished import; record a failed one. True when committed."""
        plan = result_plan(final)
        if plan.confirm:
            self._check_counts(batch_id, final, sent)
            self.store.confirm_batch(batch_id, final, watermark, forget)
            self.confirmed.add(final.id)
            _add(self.counts, "imports", 1)
            _add(self.counts, "sent", (final.created_contacts_count or 0)
                 + (final.updated_contacts_count or 0))
            log.info("import.finished", batch_id=batch_id, import_id=final.id,
                     created=final.created_contacts_count, updated=final.updated_contacts_count)
            return True
        self._give_up(batch_id, plan, import_id=final.id)
        assert plan.batch_failure is not None
        self.store.fail_batch(batch_id, plan.batch_failure)
        _add(self.counts, "imports_failed", 1)
        log.warning("import.failed", batch_id=batch_id, import_id=final.id)
        return False


    def _check_counts(self, batch_id: int, final: ImportResult, sent: int) -> None:
        """ImportFailed when Mailtrap accounts for fewer contacts than were sent."""
        if final.created_contacts_count is None or final.updated_contacts_count is None:
            return
        told = (final.created_contacts_count + final.updated_contacts_count
                + (final.contacts_over_limit_count or 0))
        if told > sent:  # every contact accounted for; Mailtrap counted some twice
            log.warning("import.overcounted", batch_id=batch_id, import_id=final.id, sent=sent,
                        accounted=told)
        if told >= sent:
            return
        reason = (f"import {final.id} finished with created {final.created_contacts_count} + "
                  f"updated {final.updated_contacts_count} + over limit "
                  f"{final.contacts_over_limit_count or 0} = {told} of {sent} contacts sent: "
                  f"{sent - told} are unaccounted for, so nothing of this batch is confirmed "
                  "and its contacts go out again on the next run")
        self.store.fail_batch(batch_id, reason)
        _add(self.counts, "unaccounted", sent - told)
        log.error("import.unaccounted", batch_id=batch_id, import_id=final.id, sent=sent,
                  accounted=told)
        raise ImportFailed(reason)

    def _give_up(self, batch_id: int, plan: Plan, *, import_id: int | None = None) -> None:
        """Perform a plan that stops the run over the contact quota: record it, raise."""
        if plan.give_up is not GiveUp.IMPORT_FAILED:
            return
        assert plan.batch_failure is not None
        self.store.fail_batch(batch_id, plan.batch_failure)
        _add(self.counts, "over_limit", plan.over_limit)
        if import_id is None:
            log.error("import.over_limit", batch_id=batch_id, over_limit=plan.over_limit)
        else:
            log.error("import.over_limit", batch_id=batch_id, import_id=import_id,
                      over_limit=plan.over_limit)
        raise ImportFailed(plan.message)


def _add(counts: dict[str, int], key: str, value: int) -> None:
    counts[key] = counts.get(key, 0) + value


_KIND_COUNT = {
    ChangeKind.CREATE: "created", ChangeKind.UPDATE: "updated",
    ChangeKind.EMAIL_CHANGE: "email_changed", ChangeKind.UNLIST: "unlisted",
    ChangeKind.UNCHANGED: "unchanged",
}


def count_change(counts: dict[str, int], change: Change) -> None:
    """Count one record by what it meant: read, and its kind of change or rejection."""
    _add(counts, "read", 1)
    if change.rejection is not None:
        key = {RejectKind.DUPLICATE: "duplicate",
               RejectKind.DUPLICATE_KEY: "duplicate_key"}.get(change.rejection.kind, "invalid")
        _add(counts, key, 1)
    elif change.still_refused:
        _add(counts, "still_refused", 1)
    elif change.kind is not None:
        _add(counts, _KIND_COUNT[change.kind], 1)


class Sink(Protocol):
    """Where the job's scan puts changes: the batch builder, or the plan's counter.

    ``pending`` is what is queued and not confirmed; ``flushes`` counts the batches handed on
    (after one, the job looks the state up again); ``flush`` hands on the batch being built;
    ``settle`` writes the rejections accepted so far (the job calls it before reading state).
    """

    pending: Pending
    flushes: int

    def accept(self, changes: Sequence[Change]) -> None: ...

    def flush(self) -> None: ...

    def resolved(self, keys: Sequence[str]) -> None: ...

    def settle(self) -> None: ...

    def sent_in_run(self, import_id: int | None) -> bool: ...


class BatchBuilder:
    """Builds batches from changes in order and hands each full one to the courier.

    A key appears at most once per batch, and so does an address: a change that would repeat
    one goes in the next batch (the one being built is sent first), so every import is a set of
    upserts Mailtrap may apply in any order.
    """

    def __init__(self, courier: Courier, batch_size: int, *, advance: bool) -> None:
        self.courier, self.size, self.advance = courier, batch_size, advance
        self.store, self.name = courier.store, courier.name
        self.floor = self.store.get_watermark(self.name) if advance else None
        self.entries: list[ImportEntry] = []
        self.forget: list[str] = []
        self.pending = Pending()
        self.flushes = 0
        self.last_done: Position | None = None
        # Rejections not written yet, by key (issue 11: one transaction per rejected row cost a
        # quarter of a no-change backfill). Written before anything reads or passes them: each
        # state look-up (``settle``), each batch handed on, the watermark, a cleared rejection.
        self.rejected: dict[str, Rejection] = {}

    def _reject(self, rejection: Rejection) -> None:
        if rejection.source_key in self.rejected:
            self.settle()  # the same key twice: two writes, as before (attempts counts both)
        self.rejected[rejection.source_key] = rejection
        if len(self.rejected) >= REJECTION_BUFFER:
            self.settle()

    def settle(self) -> None:
        """Write the rejections accepted so far (one transaction)."""
        if self.rejected:
            found, self.rejected = list(self.rejected.values()), {}
            self.store.record_rejections(self.name, self.courier.run_id, found)

    def accept(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.rejection is not None:
                self._reject(change.rejection)
        for change in changes:
            count_change(self.courier.counts, change)
            if change.entries or change.forget:
                if self._clashes(change):
                    self.flush()
                self.entries.extend(change.entries)
                if change.forget:
                    self.forget.append(change.source_key)
                self.pending.add(change)
            self.last_done = change.position
            if len(self.entries) >= self.size:
                self.flush()

    def _clashes(self, change: Change) -> bool:
        if change.source_key in self.pending.keys:
            return True
        if len(self.entries) + len(change.entries) > self.size and self.entries:
            return True
        return any(entry.email in self.pending.emails for entry in change.entries)

    def resolved(self, keys: Sequence[str]) -> None:
        """Keys whose duplicate-key rejection no longer holds (the source has one row)."""
        self.settle()
        self.store.clear_rejections(self.name, keys, kind=RejectKind.DUPLICATE_KEY)

    def sent_in_run(self, import_id: int | None) -> bool:
        return import_id is not None and import_id in self.courier.confirmed

    def flush(self) -> None:
        self.settle()
        if self.entries or self.forget:
            entries, forget = self.entries, self.forget
            self.entries, self.forget = [], []
            self.pending.clear()
            self.flushes += 1
            self.courier.deliver(entries, self._advance_to(self.last_done), forget)

    def finish(self) -> None:
        self.settle()
        if self.entries or self.forget:
            self.flush()
        elif (mark := self._advance_to(self.last_done)) is not None:
            self.store.set_watermark(self.name, mark)

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
