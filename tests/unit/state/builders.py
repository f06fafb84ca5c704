"""Small builders for state store tests: entries, import results, a confirmed batch."""

from __future__ import annotations

from sync_service.models import ChangeKind, ImportEntry, ImportResult
from sync_service.state import StateStore


def entry(
    key: str, email: str | None = None, *, digest: str | None = "h1",
    kind: ChangeKind = ChangeKind.CREATE,
) -> ImportEntry:
    """An import entry for ``key`` (email defaults to ``key@example.com``)."""
    return ImportEntry(source_key=key, email=email or f"{key}@example.com", kind=kind, hash=digest)


def finished(import_id: int, created: int = 0, updated: int = 0) -> ImportResult:
    """Mailtrap's answer for an import that finished."""
    return ImportResult(
        id=import_id, status="finished", created_contacts_count=created,
        updated_contacts_count=updated, contacts_over_limit_count=0,
    )


def confirm(store: StateStore, run_id: int, entries: list[ImportEntry], import_id: int) -> int:
    """Record, post and confirm a batch in one go; returns the batch id."""
    batch_id = store.record_batch("p", run_id, entries)
    store.mark_batch_posted(batch_id, import_id)
    store.confirm_batch(batch_id, finished(import_id))
    return batch_id
