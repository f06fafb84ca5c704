"""Custom events: CRM activity rows become Mailtrap custom events, each sent once.

``drain`` runs after the run's imports are confirmed (so an event never overtakes the import
that creates its contact):

1. **Ingest**: the events source is read from its own watermark, in chunks; each chunk's new
   events (by source key; a key seen before is never queued again) are queued in the state store
   and the events watermark moves past the chunk in the same transaction.
2. **Recover**: events a dead process left ``sending`` had their answer lost; they are queued
   again with ``lost + 1`` and sent once more.
3. **Send**: queued events whose address belongs to a contact Mailtrap confirmed for the pipeline
   go out oldest first, each written ``sending`` before its POST and ``sent`` after the answer.
   The others wait for their contact. A 404 (the contact vanished from Mailtrap) leaves the event
   waiting; a 422 records it as rejected with Mailtrap's reason.

**Budget.** Every event POST takes a permit from the same account limiter as the imports
(invariant 6). In a run, imports go first; events then use at most ``max_per_run`` requests,
by default ``budget_share`` (0.5) of one window of the account's contacts rate (100 of
200/60 s), leaving the rest of the window to the next run's imports. A larger backlog drains
over several runs, and ``status`` and ``/metrics`` show it.

**Exactly once, as far as Mailtrap allows.** The endpoint has no idempotency key. When an answer
is lost (cut connection, timeout, a kill between POST and record), the event is sent again once
per lost answer and counted "possibly duplicated"; with no lost answer it is sent exactly once.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog

from sync_service.connector import Connector, load_connector
from sync_service.errors import (
    ConfigError,
    EventRejected,
    MailtrapNotFound,
    MailtrapRetriable,
    MailtrapValidationError,
)
from sync_service.mailtrap.client import MailtrapCancelled
from sync_service.mapping import MappingRejected, normalise_email
from sync_service.models import FieldValue, SourceRecord, chunked
from sync_service.settings import parse_rate
from sync_service.settings_audience import EventsSettings
from sync_service.state.consent import QUEUED, REJECTED, SENDING, SENT, QueuedEvent

if TYPE_CHECKING:
    from sync_service.job import PlanReport, SyncJob

log = structlog.get_logger(__name__)
READ_CHUNK = 2_000
PAGE = 500
MAX_TEXT = 255


def drain(job: SyncJob, counts: dict[str, int]) -> None:
    """Ingest new events, recover lost answers, and send what the budget allows."""
    settings: EventsSettings | None = job.pipeline.events
    if settings is None:
        return
    _add(counts, "events_queued", ingest(job, settings))
    lost = job.store.requeue_lost_events(job.name)
    if lost:
        log.warning("events.answers_lost", count=lost)
    try:
        send(job, settings, counts)
    finally:
        _report_backlog(job)


def ingest(job: SyncJob, settings: EventsSettings) -> int:
    """Queue the events source's new rows; returns how many were new."""
    queued = 0
    with _open(settings) as connector:
        for chunk in chunked(connector.read(job.store.events_mark(job.name)), READ_CHUNK):
            job.check_stop()
            _check_columns(job, settings, chunk[0])
            events = [to_event(record, settings) for record in chunk if not record.deleted]
            queued += job.store.queue_events(job.name, events, chunk[-1].position)
    return queued


def _check_columns(job: SyncJob, settings: EventsSettings, record: SourceRecord) -> None:
    wanted = [settings.email, *([settings.name] if settings.name else []), *settings.params]
    missing = sorted({c for c in wanted if c not in record.values})
    if missing:
        raise ConfigError(f"pipeline {job.name}: events names columns that the events source "
                          f"does not return: {', '.join(missing)} (it returns: "
                          f"{', '.join(sorted(record.values))})")


def send(job: SyncJob, settings: EventsSettings, counts: dict[str, int]) -> None:
    budget = settings.per_run(parse_rate(job.settings.mailtrap.pacing.account))
    sent, after = 0, 0
    while sent < budget:
        page = job.store.ready_events(job.name, min(PAGE, budget - sent), after_seq=after)
        if not page:
            break
        for event in page:
            job.check_stop()
            sent += _send_one(job, event, counts)
            after = event.seq
    if sent >= budget:
        log.info("events.budget_used", sent=sent, budget=budget)


def _send_one(job: SyncJob, event: QueuedEvent, counts: dict[str, int]) -> int:
    """One event: write-ahead, POST, record. Returns 1 if a request was spent on it."""
    store, name, key = job.store, job.name, event.source_key
    store.set_event(name, key, SENDING)
    try:
        job.client.create_contact_event(event.email, event.name, event.params,
                                        on_lost=lambda: store.event_lost(name, key))
    except MailtrapNotFound:
        store.set_event(name, key, QUEUED, reason="Mailtrap has no contact with this address")
        _add(counts, "events_waiting", 1)
        return 1
    except MailtrapValidationError as exc:
        store.set_event(name, key, REJECTED, reason=str(exc))
        _add(counts, "events_rejected", 1)
        log.warning("event.rejected", source_key=key, error=str(exc))
        return 1
    except (MailtrapCancelled, MailtrapRetriable):
        # Not taken (or unknown, and then already counted lost): queued for the next run.
        store.set_event(name, key, QUEUED)
        raise
    store.set_event(name, key, SENT)
    _add(counts, "events_sent", 1)
    if event.lost:
        _add(counts, "events_resent", 1)
    return 1


def to_event(record: SourceRecord, settings: EventsSettings) -> QueuedEvent:
    """The event a source row stands for; an unusable row is queued as rejected, with why."""
    key = record.key_str
    try:
        email = normalise_email(record.values.get(settings.email))
        name = _name(record, settings)
        # NULL is left out: the spec (OpenAPI 3.1) allows no null param value.
        params = {column: _param(column, record.values[column]) for column in settings.params
                  if record.values.get(column) is not None}
    except (MappingRejected, EventRejected) as exc:
        raw = record.values.get(settings.email)
        return QueuedEvent(key, str(raw or ""), settings.name_value or "", {},
                           reason=exc.reason)
    return QueuedEvent(key, email, name, params)


def _name(record: SourceRecord, settings: EventsSettings) -> str:
    if settings.name_value is not None:
        return settings.name_value
    value = record.values.get(settings.name or "")
    if not isinstance(value, str) or not value.strip():
        raise EventRejected(f"event name (column {settings.name}) is missing")
    if len(value) > MAX_TEXT:
        raise EventRejected(f"event name (column {settings.name}) is over {MAX_TEXT} characters")
    return value


def _param(column: str, value: Any) -> FieldValue:
    """A param value as Mailtrap allows: string (≤ 255), number or boolean."""
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise EventRejected(f"param {column} is not a finite number")
        return int(value) if isinstance(value, Decimal) and value == int(value) else float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        raise EventRejected(f"param {column} is binary")
    text = str(value)
    if len(text) > MAX_TEXT:
        raise EventRejected(f"param {column} is {len(text)} characters, over {MAX_TEXT}")
    return text


def plan(job: SyncJob, report: PlanReport, state: Any, sample: int) -> None:
    """Add to the plan the events a run would send now (and those that would wait)."""
    settings = job.pipeline.events
    if settings is None:
        return
    budget = settings.per_run(parse_rate(job.settings.mailtrap.pacing.account))
    store = None if getattr(state, "empty", False) else getattr(state, "store", state)
    queued = store.ready_events(job.name, budget) if store is not None else []
    mark = store.events_mark(job.name) if store is not None else None
    new = 0
    examples = report.samples.setdefault("event", [])
    with _open(settings) as connector:
        for chunk in chunked(connector.read(mark), READ_CHUNK):
            for record in chunk:
                if record.deleted:
                    continue
                new += 1
                if len(examples) < sample:
                    event = to_event(record, settings)
                    examples.append({"source_key": event.source_key, "email": event.email,
                                     "name": event.name, "params": dict(event.params)})
    # New rows may repeat queued keys (a lookback); the count is what the source holds anew.
    report.counts["events_new_in_source"] = new
    report.counts["events_would_send"] = min(budget, len(queued) + new)


def _report_backlog(job: SyncJob) -> None:
    hook = getattr(job.observer, "events_backlog", None)
    if hook is not None:
        hook(job.name, job.store.audience_counts(job.name)["events_backlog"])


class _open:
    def __init__(self, settings: EventsSettings) -> None:
        self.settings = settings
        self.connector: Connector | None = None

    def __enter__(self) -> Connector:
        try:
            factory = load_connector(self.settings.source.connector)
        except ConfigError as exc:
            raise ConfigError(f"events.source: {exc}") from exc
        self.connector = factory(self.settings.source)
        self.connector.check()
        return self.connector

    def __exit__(self, *_exc: object) -> None:
        if self.connector is not None:
            self.connector.close()



def _add(counts: dict[str, int], key: str, value: int) -> None:
    if value:
        counts[key] = counts.get(key, 0) + value
