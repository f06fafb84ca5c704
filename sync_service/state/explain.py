"""Everything the state store knows about one contact, for ``mailtrap-sync explain``. Read only.

What the store keeps, and so what can be told (nothing here is invented or inferred):

- ``contacts``: per source key, the last address and hash Mailtrap confirmed, when, and the id of
  the import that confirmed it (its batch and run follow from that id). A ``deleted`` hash is the
  tombstone of a key gone from the source.
- ``batch_contacts`` + ``batches``: the batches still in flight (recorded or posted, not yet
  settled) that carry the key, with the address each carries and its kind (an ``unlist`` entry
  takes an old address out of the lists). Settled batches keep no per-contact rows, so the
  history of earlier imports is not recoverable beyond the confirming one.
- ``rejections``: the key's current rejection, with the address, kind, reason and attempts.
- the owner of an address: the key whose confirmed contact holds it (a duplicate waits on it).

A contact is looked for by source key and by address (as typed, and as the job normalises it,
which the caller passes in ``emails``), in every one of those tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_service.models import BatchStatus
from sync_service.state.engine import transaction
from sync_service.state.store import StateStore
from sync_service.state.tables import batch_contacts, batches, contacts, rejections, runs

TOMBSTONE = "deleted"  # diff.TOMBSTONE; not imported: the state store does not import the core
_OPEN = (str(BatchStatus.PENDING), str(BatchStatus.POSTED))


def explain_contact(store: StateStore, pipeline: str, *, key: str | None,
                    emails: Sequence[str]) -> dict[str, Any]:
    """The facts about the source key ``key`` and the keys that hold any of ``emails``.

    Returns ``{"keys": {source_key: facts}, "owners": {email: source_key}}``; ``keys`` is empty
    when the store knows nothing of the contact.
    """
    wanted = [e for e in dict.fromkeys(emails) if e]
    with transaction(store.engine, "explain a contact", write=False) as conn:
        keys = _matching_keys(conn, pipeline, key, wanted)
        facts = {k: _facts(conn, pipeline, k) for k in sorted(keys)}
    addresses = set(wanted)
    for item in facts.values():
        addresses.update(a["email"] for a in item["addresses"])
    owners = store.get_owners(pipeline, sorted(addresses))  # as the job sees owners
    for item in facts.values():
        rejection = item["rejection"]
        owner = owners.get(rejection["email"]) if rejection and rejection["email"] else None
        item["waiting_on_owner"] = (
            {"email": rejection["email"], "owner_key": owner}
            if rejection and rejection["kind"] == "duplicate" and owner not in (None, item["key"])
            else None)
    return {"keys": facts, "owners": owners}


def _matching_keys(conn: Connection, pipeline: str, key: str | None,
                   emails: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for table, email_column in ((contacts, contacts.c.email),
                                (rejections, rejections.c.email)):
        where = [table.c.source_key == key] if key is not None else []
        if emails:
            where.append(email_column.in_(list(emails)))
        if where:
            found.update(conn.execute(sa.select(table.c.source_key).where(
                table.c.pipeline == pipeline, sa.or_(*where))).scalars())
    in_flight = [batch_contacts.c.source_key == key] if key is not None else []
    if emails:
        in_flight.append(batch_contacts.c.email.in_(list(emails)))
    if in_flight:
        found.update(conn.execute(
            sa.select(batch_contacts.c.source_key)
            .join(batches, batches.c.id == batch_contacts.c.batch_id)
            .where(batches.c.pipeline == pipeline, sa.or_(*in_flight))).scalars())
    return found


def _facts(conn: Connection, pipeline: str, key: str) -> dict[str, Any]:
    confirmed = _confirmed(conn, pipeline, key)
    pending = _pending(conn, pipeline, key)
    rejection = _rejection(conn, pipeline, key)
    addresses: list[dict[str, Any]] = []
    if confirmed is not None:
        addresses.append({"email": confirmed["email"], "state": "confirmed",
                          "since": confirmed["confirmed_at"]})
    for entry in pending:
        state = "leaving the lists" if entry["kind"] == "unlist" else "in flight"
        addresses.append({"email": entry["email"], "state": state, "since": entry["recorded_at"]})
    if rejection is not None and rejection["email"]:
        addresses.append({"email": rejection["email"], "state": "rejected",
                          "since": rejection["first_seen"]})
    return {"key": key, "confirmed": confirmed, "pending": pending, "rejection": rejection,
            "addresses": addresses}


def _confirmed(conn: Connection, pipeline: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(contacts).where(
        contacts.c.pipeline == pipeline, contacts.c.source_key == key)).mappings().first()
    if row is None:
        return None
    batch = None
    if row["import_id"] is not None:
        found = conn.execute(sa.select(batches).where(
            batches.c.pipeline == pipeline, batches.c.import_id == row["import_id"])
            .order_by(batches.c.id.desc()).limit(1)).mappings().first()
        if found is not None:
            batch = {"batch_id": found["id"], "run_id": found["run_id"],
                     "status": found["status"], "finished_at": found["finished_at"]}
    return {"email": row["email"], "hash": row["hash"], "confirmed_at": row["updated_at"],
            "deleted_at_source": row["hash"] == TOMBSTONE, "import_id": row["import_id"],
            "batch": batch}


def _pending(conn: Connection, pipeline: str, key: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(batch_contacts.c.email, batch_contacts.c.kind, batches.c.id,
                  batches.c.status, batches.c.import_id, batches.c.run_id,
                  batches.c.created_at)
        .join(batches, batches.c.id == batch_contacts.c.batch_id)
        .where(batches.c.pipeline == pipeline, batch_contacts.c.source_key == key,
               batches.c.status.in_(_OPEN))
        .order_by(batches.c.id)).mappings()
    return [{"batch_id": r["id"], "status": r["status"], "import_id": r["import_id"],
             "run_id": r["run_id"], "email": r["email"], "kind": r["kind"],
             "recorded_at": r["created_at"]} for r in rows]


def _rejection(conn: Connection, pipeline: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(rejections, runs.c.kind.label("run_kind"))
        .outerjoin(runs, runs.c.id == rejections.c.run_id)
        .where(rejections.c.pipeline == pipeline, rejections.c.source_key == key)
    ).mappings().first()
    if row is None:
        return None
    return {"email": row["email"], "kind": row["kind"], "reason": row["reason"],
            "attempts": row["attempts"], "first_seen": row["first_seen"],
            "last_seen": row["last_seen"], "run_id": row["run_id"], "run_kind": row["run_kind"]}
