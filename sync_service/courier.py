"""The courier: sends the batches of one run, several imports in flight, confirmed in order.

The batch builder (``delivery.BatchBuilder``) hands each full batch to ``Courier.send``, which
records it (write-ahead) and posts it, then returns so the job reads and decides on while
Mailtrap runs the import. At most ``mailtrap.imports_in_flight`` batches are handed over and not
yet confirmed: once that many are, ``send`` waits for the oldest (with 1, every batch is
confirmed before ``send`` returns, as before pipelining). ``poll`` confirms what is ready
without waiting; ``drain`` waits until everything handed over is confirmed.

How it keeps design.md's invariants:

1. No change is lost: batches are confirmed strictly in the order they were handed over. Only
   the oldest batch's import is polled (a later one cannot be confirmed before it anyway, and
   polling it would spend the API budget for nothing); a batch's hashes and the watermark given
   with it are committed in one transaction (``StateStore.confirm_batch``) when its import is
   ``finished`` and every earlier batch is confirmed. An import that ends ``failed`` is posted
   again (then in halves); one that keeps failing or ends over the contact quota stops the run,
   and the watermark stays before it. The imports still in flight behind it are then polled to
   their end where possible and their hashes committed without any watermark (as ``recover``
   does); whatever cannot be finished stays POSTED for the next run.
3. Crash at any instant: a batch is recorded before it is posted. ``recover`` polls every
   import a previous run got an id for, oldest first (several may be open), commits each one
   that finished (hashes only: the watermark stays where it is, so the rows are read again and
   found unchanged), and abandons the batches that never got an id.
6. Requests are paced: every request (posts and polls alike) goes through the client's pacer,
   one at a time, in this thread.
8. Rejected contacts: a 422 that names contacts takes their source keys out of the batch (every
   entry of a key), records each key with Mailtrap's reasons, and posts the rest again; a 422
   that names nobody is narrowed down by posting halves, within a small budget. The builder is
   told (``Listener.refused``), so those keys stop counting as queued.

A stop request or a lost lease posts nothing more and ends every wait at once: the imports in
flight stay POSTED, and the next run's ``recover`` finishes them. What to do after each answer
is decided by ``delivery_plan`` (pure); the courier performs it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from sync_service.delivery_plan import (
    GiveUp,
    Plan,
    PollClock,
    accounted,
    failed_import_plan,
    refusal_budget,
    refusal_plan,
    result_plan,
    unaccounted,
    unattributed_plan,
)
from sync_service.errors import (
    ImportFailed,
    Interrupted,
    MailtrapNotFound,
    MailtrapRetriable,
    MailtrapValidationError,
    Stopped,
    SyncError,
)
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import (
    BatchStatus,
    ImportEntry,
    ImportResult,
    Position,
    import_body,
    with_payload,
    without_payload,
)
from sync_service.observers import RunObserver
from sync_service.settings import MailtrapSettings
from sync_service.state import StateStore

log = structlog.get_logger(__name__)
STOP_CHECK_S = 0.2  # how often a wait between polls looks at the stop request


@dataclass
class Handed:
    """A batch the builder handed over: its entries and the deleted keys to forget with it.

    The builder keeps it until the courier says the batch settled; ``refused`` are the keys
    Mailtrap refused on the way (their entries never went out)."""

    entries: list[ImportEntry]
    forget: list[str]
    refused: set[str] = field(default_factory=set)


class Listener(Protocol):
    """Told what became of handed batches (the builder, to keep its queued keys right)."""

    def refused(self, batch: Handed, keys: Collection[str]) -> None: ...

    def settled(self, batch: Handed) -> None: ...


class _Unattributed(SyncError):
    """Mailtrap refused an import (422) without naming any contact of ``part`` (what was left)."""

    def __init__(self, message: str, part: list[ImportEntry]) -> None:
        super().__init__(message)
        self.part = part


@dataclass
class _Posted:
    """One part of a batch Mailtrap accepted as an import; ``result`` once it ended.

    ``part`` keeps each entry's key, address, kind and hash only, and ``body`` the import as
    posted: a failed import gives its contacts' fields and lists back from it (``with_payload``)
    to post them again. A batch in flight costs ~8 MiB of body per 50,000 contacts instead of
    ~30 MiB of field dicts (issue 11: two batches held at once broke the 200 MiB bound)."""

    batch_id: int
    import_id: int
    part: list[ImportEntry]
    clock: PollClock
    body: bytes
    result: ImportResult | None = None


@dataclass
class _Flight:
    """A handed batch on its way, one part at a time (a batch is split only when Mailtrap
    refuses or fails it): the part posted, the parts to post after it; the watermark goes
    with the last."""

    batch: Handed
    watermark: Position | None
    budget: int
    todo: list[list[ImportEntry]] = field(default_factory=list)
    current: _Posted | None = None
    failures: int = 0
    refusals: int = 0
    committed: bool = False  # the watermark and forgotten keys went with a confirmed part


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
    listener: Listener | None = None
    # Imports this run saw finished and committed: a key confirmed by one was read in this run.
    confirmed: set[int] = field(default_factory=set)
    flights: deque[_Flight] = field(default_factory=deque)

    # recovery -------------------------------------------------------------------------------
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

    def _wait(self, import_id: int) -> ImportResult:
        cfg = self.mailtrap
        with structlog.contextvars.bound_contextvars(import_id=import_id):
            final = self.client.wait_for_import(
                import_id, interval=cfg.poll_interval, max_interval=cfg.poll_max_interval,
                timeout=cfg.import_timeout, should_stop=self.stopping)
        if final is None:
            raise Interrupted(f"stopped while import {import_id} was running; "
                              "the next run polls it")
        self._done(final)
        return final

    # the run's batches ----------------------------------------------------------------------
    def send(self, batch: Handed, watermark: Position | None) -> None:
        """Record and post ``batch``; it is confirmed later, after every earlier one, with
        ``watermark``. Waits for the oldest batches while ``imports_in_flight`` are out."""
        flight = _Flight(batch, watermark, refusal_budget(len(batch.entries)))
        if batch.entries:
            flight.todo.append(batch.entries)
        self.flights.append(flight)
        with self._failing():
            self._post_next(flight)
            self._advance(wait=False)
            while len(self.flights) >= self.mailtrap.imports_in_flight:
                self._advance(wait=True)

    def poll(self) -> None:
        """Confirm what is ready, without waiting: the oldest import is polled if it is due."""
        with self._failing():
            self._advance(wait=False)

    def drain(self) -> None:
        """Wait until every batch handed over is confirmed (or the run stops)."""
        with self._failing():
            while self.flights:
                self._advance(wait=True)

    def _advance(self, *, wait: bool) -> None:
        """Settle batches from the oldest on while their imports have ended; with ``wait``,
        wait for the oldest batch to settle first."""
        while self.flights:
            flight = self.flights[0]
            while (head := flight.current) is not None:
                if head.result is None and not self._poll(head, wait=wait):
                    return
                flight.current = None
                self._settle_part(flight, head)
                self._post_next(flight)
            self.flights.popleft()
            if not flight.committed:
                self.store.advance(self.name, flight.watermark, flight.batch.forget)
            if self.listener is not None:
                self.listener.settled(flight.batch)
            wait = False  # the oldest has settled: the rest only if ready

    def _poll(self, posted: _Posted, *, wait: bool) -> bool:
        """Poll ``posted`` when due (waiting for that if ``wait``); True once it has ended."""
        while True:
            left = posted.clock.wait(time.monotonic())
            if left > 0:
                if not wait:
                    return False
                if not self._pause(left):
                    raise Interrupted(f"stopped while import {posted.import_id} was running; "
                                      "the next run polls it")
            with structlog.contextvars.bound_contextvars(import_id=posted.import_id):
                result = self.client.get_import(posted.import_id)
            if result.done:
                posted.result = result
                self._done(result)
                return True
            if not posted.clock.polled(time.monotonic()):
                raise MailtrapRetriable(f"import {posted.import_id} still {result.status} after "
                                        f"{self.mailtrap.import_timeout:.0f}s")
            if not wait:
                return False

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, looking at the stop request as it goes; False if it came."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stopping():
                return False
            time.sleep(min(STOP_CHECK_S, left))
        return not self.stopping()

    def _done(self, final: ImportResult) -> None:
        if self.observer is not None:
            self.observer.import_done(self.name, final)

    def _settle_part(self, flight: _Flight, posted: _Posted) -> None:
        """Commit an ended part (with the watermark if it is the last), or post it again."""
        assert posted.result is not None
        last = not flight.todo
        forget = flight.batch.forget if last else ()
        if self._settle(posted.batch_id, posted.result, flight.watermark if last else None,
                        forget, sent=len(posted.part)):
            flight.committed = last
            return
        flight.failures += 1
        plan = failed_import_plan(with_payload(posted.part, posted.body), posted.import_id,
                                  flight.failures)
        if plan.give_up is not None:
            raise ImportFailed(plan.message)
        flight.todo[:0] = [list(p) for p in plan.parts]

    def _post_next(self, flight: _Flight) -> None:
        """Record and post the flight's next part, until Mailtrap accepts one (or none is
        left): a 422 takes contacts out, or splits the part."""
        cfg = self.mailtrap
        while flight.todo and flight.current is None:
            part = flight.todo.pop(0)
            self.check_stop()
            batch_id = self.store.record_batch(self.name, self.run_id, part)
            try:
                part, import_id, body = self._post(flight, batch_id, part)
            except _Unattributed as refusal:
                flight.refusals += 1
                flight.todo[:0] = self._isolate(flight, batch_id, refusal)
                continue
            if import_id is not None:
                clock = PollClock.start(time.monotonic(), interval=cfg.poll_interval,
                                        max_interval=cfg.poll_max_interval,
                                        timeout=cfg.import_timeout)
                # In place: the builder's handed batch is this same list (unless split).
                part[:] = [without_payload(entry) for entry in part]
                flight.current = _Posted(batch_id, import_id, part, clock, body)

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """When the run stops over an import, finish the imports in flight behind it first."""
        try:
            yield
        except ImportFailed:
            self._wind_down()
            raise

    def _wind_down(self) -> None:
        """Poll the imports still in flight to their end and commit their hashes, without any
        watermark (as ``recover`` would); on a stop or another error, leave them POSTED."""
        flights, self.flights = self.flights, deque()
        for posted in (f.current for f in flights if f.current is not None):
            try:
                if posted.result is None and not self._poll(posted, wait=True):
                    continue
                assert posted.result is not None
                self._settle(posted.batch_id, posted.result, None, sent=len(posted.part))
            except SyncError as exc:
                log.warning("import.left_in_flight", batch_id=posted.batch_id,
                            import_id=posted.import_id, error=str(exc))
                if isinstance(exc, Stopped):
                    return

    # posting --------------------------------------------------------------------------------
    def _post(self, flight: _Flight, batch_id: int, part: list[ImportEntry]
              ) -> tuple[list[ImportEntry], int | None, bytes]:
        """POST the import; take out contacts Mailtrap rejects (422) and post the rest.
        Returns the part posted, its import id (None if nothing was left) and its body."""
        while part:
            body = import_body(part)
            try:
                created = self.client.create_import_body(body, len(part))
            except MailtrapValidationError as exc:
                part = self._reject(flight, batch_id, part, exc)
                continue
            self.store.mark_batch_posted(batch_id, created.id)
            log.info("import.posted", batch_id=batch_id, import_id=created.id, size=len(part))
            return part, created.id, body
        self.store.fail_batch(batch_id, "every contact was rejected by Mailtrap")
        return part, None, b""

    def _reject(self, flight: _Flight, batch_id: int, part: list[ImportEntry],
                exc: MailtrapValidationError) -> list[ImportEntry]:
        """Record the keys whose entries Mailtrap named; the entries left to post again."""
        plan = refusal_plan(part, exc.contact_errors, exc.body, str(exc))
        self._give_up(batch_id, plan)
        if plan.unattributed:
            raise _Unattributed(plan.message, part)
        self.store.record_rejections(self.name, self.run_id, list(plan.rejections))
        self.store.remove_from_batch(batch_id, list(plan.removed))
        self._refused(flight, [r.source_key for r in plan.rejections])
        _add(self.counts, "rejected", len(plan.rejections))
        log.warning("import.contacts_rejected", batch_id=batch_id, count=len(plan.rejections),
                    reasons=list(plan.reasons))
        return list(plan.retry)

    def _isolate(self, flight: _Flight, batch_id: int, refusal: _Unattributed
                 ) -> list[list[ImportEntry]]:
        """Halves of a part refused as a whole; a lone key is recorded as rejected instead."""
        part = refusal.part
        plan = unattributed_plan(part, str(refusal), refusals=flight.refusals,
                                 budget=flight.budget)
        assert plan.batch_failure is not None
        self.store.fail_batch(batch_id, plan.batch_failure)
        if plan.give_up is not None:
            raise SyncError(plan.message)
        if plan.rejections:
            self.store.record_rejections(self.name, self.run_id, list(plan.rejections))
            self._refused(flight, [plan.rejections[0].source_key])
            _add(self.counts, "rejected", 1)
            log.warning("import.contact_isolated", batch_id=batch_id,
                        source_key=plan.rejections[0].source_key)
            return []
        log.warning("import.refused_unattributed", batch_id=batch_id, size=len(part))
        return [list(p) for p in plan.parts]

    def _refused(self, flight: _Flight, keys: list[str]) -> None:
        flight.batch.refused.update(keys)
        if self.listener is not None:
            self.listener.refused(flight.batch, keys)

    # settling -------------------------------------------------------------------------------
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
        told = accounted(final)
        if told is not None and told > sent:  # every contact accounted for; some counted twice
            log.warning("import.overcounted", batch_id=batch_id, import_id=final.id, sent=sent,
                        accounted=told)
        reason = unaccounted(final, sent)
        if told is None or reason is None:
            return
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
