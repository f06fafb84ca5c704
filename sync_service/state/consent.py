"""State of the audience features (consent branch): opt-outs, custom events, reconcile marks.

Plain functions on a connection, called by ``StateStore`` inside its transactions. Promises:

- **An opt-out is done only after Mailtrap answered**: ``record_optouts`` writes it pending;
  ``optout_done`` is called once the PATCH succeeded. A crash in between leaves it pending, so
  the (idempotent) PATCH is sent once more, never lost.
- **Events are deduplicated by source key**: ``queue_events`` inserts only keys it has never
  seen, and moves the events watermark in the same transaction, so a re-read row is never queued
  twice and an unqueued one is never skipped.
- **Write-ahead for events**: ``event_sending`` is committed before the POST and ``event_sent``
  after the answer. ``requeue_lost`` turns what a dead process left ``sending`` into ``queued``
  with ``lost + 1``: its answer was lost, so it is sent again, once.
- **Drift marks** replace a contact's confirmed hash by ``DRIFT``, which no contact hashes to, so
  the diff sends the key again when its row is re-read (``drifted_keys`` says which to re-read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_service.errors import StateError
from sync_service.models import Position
from sync_service.state import codec, sql
from sync_service.state.tables import consent_events, consent_marks, consent_optouts, contacts

DRIFT = "drift"  # the hash of a contact a reconcile found changed in Mailtrap
PENDING, DONE = "pending", "done"
SOURCE, MAILTRAP = "source", "mailtrap"
QUEUED, SENDING, SENT, REJECTED = "queued", "sending", "sent", "rejected"


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """One custom event: its source key, the contact's address, name and params."""

    source_key: str
    email: str
    name: str
    params: Mapping[str, Any]
    lost: int = 0
    seq: int = 0
    reason: str | None = None  # set: the row cannot be sent; it is recorded as rejected


# opt-outs ---------------------------------------------------------------------------------------

def record_optouts(conn: Connection, pipeline: str, found: Mapping[str, str], origin: str,
                   now: datetime) -> int:
    """Record opted-out keys (key → email); returns how many are new or changed.

    From the source: a new key (or a known key with a new email) becomes pending. From Mailtrap:
    the key is done (Mailtrap already has it unsubscribed).
    """
    t = consent_optouts
    changed = 0
    keys = list(found)
    for chunk in sql.chunked(keys):
        rows = conn.execute(sa.select(t.c.source_key, t.c.email, t.c.status).where(
            t.c.pipeline == pipeline, t.c.source_key.in_(chunk))).all()
        known = {key: (email, status) for key, email, status in rows}
        for key in chunk:
            email = found[key]
            status = DONE if origin == MAILTRAP else PENDING
            before = known.get(key)
            if before is None:
                conn.execute(sa.insert(t).values(
                    pipeline=pipeline, source_key=key, email=email, origin=origin,
                    status=status, recorded_at=now, done_at=now if status == DONE else None))
            elif before[0] != email or (origin == MAILTRAP and before[1] != DONE):
                conn.execute(sa.update(t).where(t.c.pipeline == pipeline, t.c.source_key == key)
                             .values(email=email, origin=origin, status=status, reason=None,
                                     recorded_at=now, done_at=now if status == DONE else None))
            else:
                continue
            changed += 1
    return changed


def pending_optouts(conn: Connection, pipeline: str, after: str | None,
                    limit: int) -> list[tuple[str, str]]:
    """(key, email) of pending opt-outs whose contact Mailtrap confirmed at that email."""
    t = consent_optouts
    query = (sa.select(t.c.source_key, t.c.email)
             .join(contacts, sa.and_(contacts.c.pipeline == t.c.pipeline,
                                     contacts.c.source_key == t.c.source_key,
                                     contacts.c.email == t.c.email))
             .where(t.c.pipeline == pipeline, t.c.status == PENDING)
             .order_by(t.c.source_key).limit(limit))
    if after is not None:
        query = query.where(t.c.source_key > after)
    return [(key, email) for key, email in conn.execute(query)]


def optout_done(conn: Connection, pipeline: str, key: str, email: str, now: datetime) -> None:
    t = consent_optouts
    conn.execute(sa.update(t).where(t.c.pipeline == pipeline, t.c.source_key == key,
                                    t.c.email == email)
                 .values(status=DONE, reason=None, done_at=now))


def optout_refused(conn: Connection, pipeline: str, key: str, reason: str) -> None:
    t = consent_optouts
    conn.execute(sa.update(t).where(t.c.pipeline == pipeline, t.c.source_key == key)
                 .values(reason=reason))


def unsubscribed_keys(conn: Connection, pipeline: str, keys: Sequence[str]) -> set[str]:
    """The keys among ``keys`` known to be unsubscribed in Mailtrap (done opt-outs)."""
    t = consent_optouts
    found: set[str] = set()
    for among in sql.matching(conn, t.c.source_key, list(dict.fromkeys(keys))):
        found.update(conn.execute(sa.select(t.c.source_key).where(
            t.c.pipeline == pipeline, t.c.status == DONE, among)).scalars())
    return found


def optout_counts(conn: Connection, pipeline: str) -> dict[str, int]:
    t = consent_optouts
    rows = conn.execute(sa.select(t.c.origin, t.c.status, sa.func.count())
                        .where(t.c.pipeline == pipeline).group_by(t.c.origin, t.c.status))
    counts = {"opted_out": 0, "optouts_pending": 0, "unsubscribed_in_mailtrap": 0}
    for origin, status, n in rows:
        if status == PENDING:
            counts["optouts_pending"] += n
        elif origin == MAILTRAP:
            counts["unsubscribed_in_mailtrap"] += n
        else:
            counts["opted_out"] += n
    return counts


# events -----------------------------------------------------------------------------------------

def events_mark(conn: Connection, pipeline: str) -> Position | None:
    row = conn.execute(sa.select(consent_marks.c.events_cursor, consent_marks.c.events_key)
                       .where(consent_marks.c.pipeline == pipeline)).first()
    if row is None or row.events_cursor is None:
        return None
    try:
        return Position(codec.decode(row.events_cursor), codec.decode(row.events_key))
    except ValueError as exc:
        raise StateError(f"the events watermark of pipeline {pipeline!r} is unreadable") from exc


def queue_events(conn: Connection, pipeline: str, events: Sequence[QueuedEvent],
                 mark: Position | None, now: datetime) -> int:
    """Queue the events whose keys were never seen, and move the events watermark; how many."""
    t = consent_events
    fresh = list({e.source_key: e for e in events}.values())
    known: set[str] = set()
    for among in sql.matching(conn, t.c.source_key, [e.source_key for e in fresh]):
        known.update(conn.execute(sa.select(t.c.source_key).where(
            t.c.pipeline == pipeline, among)).scalars())
    fresh = [e for e in fresh if e.source_key not in known]
    if fresh:
        top = conn.execute(sa.select(sa.func.max(t.c.seq)).where(t.c.pipeline == pipeline)
                           ).scalar_one()
        start = int(top or 0) + 1
        conn.execute(sa.insert(t), [
            {"pipeline": pipeline, "source_key": e.source_key, "seq": start + i,
             "email": e.email, "name": e.name, "params": json.dumps(dict(e.params)),
             "status": QUEUED if e.reason is None else REJECTED, "attempts": 0, "lost": 0,
             "reason": e.reason, "queued_at": now,
             "sent_at": None}
            for i, e in enumerate(fresh)])
    if mark is not None:
        _write_marks(conn, pipeline, now, events_cursor=codec.encode(mark.cursor),
                     events_key=codec.encode(mark.key))
    return len(fresh)


def requeue_lost(conn: Connection, pipeline: str) -> int:
    """Events a dead process left ``sending``: their answer was lost; queue them once more."""
    t = consent_events
    result = conn.execute(sa.update(t).where(t.c.pipeline == pipeline, t.c.status == SENDING)
                          .values(status=QUEUED, lost=t.c.lost + 1))
    return int(result.rowcount)


def ready_events(conn: Connection, pipeline: str, limit: int,
                 after_seq: int = 0) -> list[QueuedEvent]:
    """Queued events whose contact Mailtrap confirmed, oldest first (the others wait)."""
    t = consent_events
    rows = conn.execute(sa.select(t.c.source_key, t.c.email, t.c.name, t.c.params, t.c.lost,
                                  t.c.seq)
                        .where(t.c.pipeline == pipeline, t.c.status == QUEUED, _confirmed(),
                               t.c.seq > after_seq)
                        .order_by(t.c.seq).limit(limit))
    return [QueuedEvent(key, email, name, json.loads(params), lost, seq)
            for key, email, name, params, lost, seq in rows]


def _confirmed() -> sa.Exists:
    """The event's address belongs to a contact Mailtrap confirmed for the pipeline."""
    t = consent_events
    return sa.exists().where(contacts.c.pipeline == t.c.pipeline, contacts.c.email == t.c.email,
                             contacts.c.hash != "deleted")


def set_event(conn: Connection, pipeline: str, key: str, status: str, now: datetime, *,
              reason: str | None = None) -> None:
    """Move one event to ``status`` (sending: attempts + 1; sent: sent_at)."""
    t = consent_events
    values: dict[str, Any] = {"status": status, "reason": reason}
    if status == SENDING:
        values["attempts"] = t.c.attempts + 1
    if status == SENT:
        values["sent_at"] = now
    conn.execute(sa.update(t).where(t.c.pipeline == pipeline, t.c.source_key == key)
                 .values(**values))


def event_lost(conn: Connection, pipeline: str, key: str) -> None:
    t = consent_events
    conn.execute(sa.update(t).where(t.c.pipeline == pipeline, t.c.source_key == key)
                 .values(lost=t.c.lost + 1))


def event_counts(conn: Connection, pipeline: str) -> dict[str, int]:
    t = consent_events
    rows = conn.execute(sa.select(t.c.status, sa.func.count()).where(t.c.pipeline == pipeline)
                        .group_by(t.c.status))
    by_status: dict[str, int] = {str(k): int(v) for k, v in rows.all()}
    duplicated = conn.execute(sa.select(sa.func.count()).where(
        t.c.pipeline == pipeline, t.c.lost > 0, t.c.status == SENT)).scalar_one()
    ready = conn.execute(sa.select(sa.func.count()).where(
        t.c.pipeline == pipeline, t.c.status == QUEUED, _confirmed())).scalar_one()
    backlog = int(by_status.get(QUEUED, 0)) + int(by_status.get(SENDING, 0))
    return {"events_sent": int(by_status.get(SENT, 0)), "events_backlog": backlog,
            "events_waiting": int(by_status.get(QUEUED, 0)) - ready,
            "events_rejected": int(by_status.get(REJECTED, 0)),
            "events_possibly_duplicated": int(duplicated)}


# reconcile --------------------------------------------------------------------------------------

def mark_drifted(conn: Connection, pipeline: str, keys: Sequence[str]) -> int:
    """Make the diff send these keys again (their confirmed hash becomes ``DRIFT``)."""
    total = 0
    for among in sql.matching(conn, contacts.c.source_key, list(dict.fromkeys(keys))):
        result = conn.execute(sa.update(contacts).where(contacts.c.pipeline == pipeline, among)
                              .values(hash=DRIFT))
        total += int(result.rowcount)
    return total


def forget_drift(conn: Connection, pipeline: str, keys: Sequence[str]) -> None:
    """Drifted keys whose rows left the source: tombstoned, as a deleted row would be."""
    for among in sql.matching(conn, contacts.c.source_key, list(dict.fromkeys(keys))):
        conn.execute(sa.update(contacts).where(contacts.c.pipeline == pipeline,
                                               contacts.c.hash == DRIFT, among)
                     .values(hash="deleted"))


def drifted_keys(conn: Connection, pipeline: str, after: str | None, limit: int) -> list[str]:
    query = (sa.select(contacts.c.source_key)
             .where(contacts.c.pipeline == pipeline, contacts.c.hash == DRIFT)
             .order_by(contacts.c.source_key).limit(limit))
    if after is not None:
        query = query.where(contacts.c.source_key > after)
    return list(conn.execute(query).scalars())


def contacts_page(conn: Connection, pipeline: str, after: str | None,
                  limit: int) -> list[tuple[str, str, str]]:
    """(key, email, hash) of confirmed contacts in key order, one page after ``after``."""
    query = (sa.select(contacts.c.source_key, contacts.c.email, contacts.c.hash)
             .where(contacts.c.pipeline == pipeline).order_by(contacts.c.source_key).limit(limit))
    if after is not None:
        query = query.where(contacts.c.source_key > after)
    return [(key, email, hash_) for key, email, hash_ in conn.execute(query)]


def reconciled_at(conn: Connection, pipeline: str) -> datetime | None:
    value = conn.execute(sa.select(consent_marks.c.reconciled_at)
                         .where(consent_marks.c.pipeline == pipeline)).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


def set_reconciled(conn: Connection, pipeline: str, now: datetime) -> None:
    _write_marks(conn, pipeline, now, reconciled_at=now)


def _write_marks(conn: Connection, pipeline: str, now: datetime, **values: Any) -> None:
    insert = sql.upsert(conn, consent_marks).values(pipeline=pipeline, updated_at=now, **values)
    conn.execute(insert.on_conflict_do_update(
        index_elements=[consent_marks.c.pipeline],
        set_={name: insert.excluded[name] for name in [*values, "updated_at"]}))
