"""Delivery of one run's changes: batches built in order and handed to the courier.

The job (``job.py``) reads and decides; this module builds batches and ``courier`` sends them
(record → post → poll → confirm, several imports in flight, confirmed in order; its docstring
says how invariants 1, 3, 6 and 8 are kept there). What this module adds:

2. Every change is judged against the newest state: ``BatchBuilder.pending`` is everything
   queued and not confirmed yet, the batch being built and the batches in flight alike, and the
   job decides each record against the confirmed state overlaid with it (``diff.Pending``). A
   key or an address appears in at most one of those batches: a change that would repeat one
   makes the builder hand over what it is building and wait until everything handed over is
   confirmed (``flush``), so imports that Mailtrap may run at the same time never share an
   address, and a key read again is diffed against what Mailtrap confirmed for it. A full
   batch is only handed over (``send``); the job reads on while it runs.
5. Bounded memory: at most ``mailtrap.imports_in_flight`` batches are handed over and not
   confirmed, each of at most ``batch_size`` entries.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from sync_service.courier import Courier as Courier  # noqa: PLC0414 - its home before pipelining
from sync_service.courier import Handed
from sync_service.delivery_plan import MAX_IMPORT_FAILURES as MAX_IMPORT_FAILURES  # noqa: PLC0414
from sync_service.diff import Change, Pending
from sync_service.errors import ImportFailed as ImportFailed  # noqa: PLC0414 - old home
from sync_service.errors import Interrupted as Interrupted  # noqa: PLC0414 - old home
from sync_service.models import (
    ChangeKind,
    ImportEntry,
    Position,
    Rejection,
    RejectKind,
)

# Rejections a batch builder keeps before writing them in one transaction.
REJECTION_BUFFER = 5_000


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

    ``pending`` is what is queued and not confirmed; ``flushes`` counts the times the state the
    job looked up stopped describing it (a batch confirmed, keys refused): after one, the job
    looks the state up again. ``flush`` sends everything queued and returns once it is confirmed;
    ``settle`` writes the rejections accepted so far and confirms what is ready (the job calls
    it before reading state).
    """

    pending: Pending
    flushes: int

    def accept(self, changes: Sequence[Change]) -> None: ...

    def accept_unchanged(self, count: int, last: Position) -> None:
        """As ``accept`` of ``count`` UNCHANGED changes whose last is at ``last`` (the re-read
        skip accepts runs of rows at once: one ``Change`` per row cost ~3 µs a row)."""

    def flush(self) -> None: ...

    def resolved(self, keys: Sequence[str]) -> None: ...

    def settle(self) -> None: ...

    def sent_in_run(self, import_id: int | None) -> bool: ...


class BatchBuilder:
    """Builds batches from changes in order and hands each full one to the courier.

    A key appears at most once per batch, and so does an address, and neither appears in two
    batches queued at once: a change that would repeat one goes in the next batch, once every
    batch before it is confirmed (``flush``), so every import is a set of upserts Mailtrap may
    apply in any order, at the same time as the others in flight.
    """

    def __init__(self, courier: Courier, batch_size: int, *, advance: bool) -> None:
        self.courier, self.size, self.advance = courier, batch_size, advance
        self.store, self.name = courier.store, courier.name
        self.floor = self.store.get_watermark(self.name) if advance else None
        self.entries: list[ImportEntry] = []
        self.forget: list[str] = []
        # Queued and not confirmed: the batch being built and every batch in flight.
        self.pending = Pending()
        self.flushes = 0
        self.last_done: Position | None = None
        # Rejections not written yet, by key (issue 11: one transaction per rejected row cost a
        # quarter of a no-change backfill). Written before anything reads or passes them: each
        # state look-up (``settle``), each batch handed on, the watermark, a cleared rejection.
        self.rejected: dict[str, Rejection] = {}
        courier.listener = self

    def _reject(self, rejection: Rejection) -> None:
        if rejection.source_key in self.rejected:
            self._write_rejections()  # the same key twice: two writes (attempts counts both)
        self.rejected[rejection.source_key] = rejection
        if len(self.rejected) >= REJECTION_BUFFER:
            self._write_rejections()

    def _write_rejections(self) -> None:
        if self.rejected:
            found, self.rejected = list(self.rejected.values()), {}
            self.store.record_rejections(self.name, self.courier.run_id, found)

    def settle(self) -> None:
        """Write the rejections accepted so far (one transaction), and confirm the batches in
        flight that are ready (a poll of the oldest import if it is due; no waiting)."""
        self._write_rejections()
        self.courier.poll()

    def accept(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.rejection is not None:
                self._reject(change.rejection)
        for change in changes:
            count_change(self.courier.counts, change)
            if change.entries or change.forget:
                if self._repeats(change):
                    self.flush()
                elif self.entries and len(self.entries) + len(change.entries) > self.size:
                    self._hand_over()
                self.entries.extend(change.entries)
                if change.forget:
                    self.forget.append(change.source_key)
                self.pending.add(change)
            self.last_done = change.position
            if len(self.entries) >= self.size:
                self._hand_over()

    def accept_unchanged(self, count: int, last: Position) -> None:
        """``count`` UNCHANGED rows read, up to ``last``: counted, and the watermark may pass
        them (nothing is queued, so no batch fills up)."""
        _add(self.courier.counts, "read", count)
        _add(self.courier.counts, "unchanged", count)
        self.last_done = last

    def _repeats(self, change: Change) -> bool:
        """Whether ``change`` has a key or an address that is queued already."""
        if change.source_key in self.pending.keys:
            return True
        return any(entry.email in self.pending.emails for entry in change.entries)

    def resolved(self, keys: Sequence[str]) -> None:
        """Keys whose duplicate-key rejection no longer holds (the source has one row)."""
        self._write_rejections()
        self.store.clear_rejections(self.name, keys, kind=RejectKind.DUPLICATE_KEY)

    def sent_in_run(self, import_id: int | None) -> bool:
        return import_id is not None and import_id in self.courier.confirmed

    def flush(self) -> None:
        """Hand over the batch being built and wait until everything queued is confirmed."""
        self._hand_over()
        self.courier.drain()

    def _hand_over(self) -> None:
        """Give the batch being built to the courier (it may wait for older ones first)."""
        self._write_rejections()
        if self.entries or self.forget:
            batch = Handed(self.entries, self.forget)
            self.entries, self.forget = [], []
            self.courier.send(batch, self._advance_to(self.last_done))

    def finish(self) -> None:
        """Send what is left and wait until all of it is confirmed, with the watermark."""
        self._write_rejections()
        if self.entries or self.forget:
            self.flush()
            return
        self.courier.drain()
        if (mark := self._advance_to(self.last_done)) is not None:
            self.store.set_watermark(self.name, mark)

    # told by the courier (``courier.Listener``) ------------------------------------------------
    def refused(self, batch: Handed, keys: Collection[str]) -> None:
        """Mailtrap refused these keys of a handed batch: they are no longer queued."""
        _unqueue(self.pending, [e for e in batch.entries if e.source_key in keys], keys)
        self.flushes += 1

    def settled(self, batch: Handed) -> None:
        """A handed batch is confirmed (or was refused): its keys are no longer queued."""
        refused = batch.refused
        entries = [e for e in batch.entries if e.source_key not in refused] if refused else (
            batch.entries)
        _unqueue(self.pending, entries, batch.forget)
        self.flushes += 1

    def _advance_to(self, position: Position | None) -> Position | None:
        """``position`` if the watermark may move to it (forward only), else None."""
        if not self.advance or position is None:
            return None
        if self.floor is not None and not _ahead(position, self.floor):
            return None
        self.floor = position
        return position


def _unqueue(pending: Pending, entries: Sequence[ImportEntry], keys: Collection[str]) -> None:
    """Take ``entries`` (and the forgotten ``keys``) out of ``pending``; an address another
    key queued since stays."""
    for entry in entries:
        key, email = entry.source_key, entry.email
        pending.keys.pop(key, None)
        if pending.emails.get(email) == key:
            del pending.emails[email]
        if pending.takes.get(email) == key:
            del pending.takes[email]
    for key in keys:
        pending.keys.pop(key, None)


def _ahead(a: Position, b: Position) -> bool:
    try:
        return bool((a.cursor, a.key) > (b.cursor, b.key))
    except TypeError:
        return True
