"""Read-only views of the state store for the CLI: ``plan``'s state, ``status`` rows.

Nothing here writes. A state store without a schema yet reads as empty for ``plan``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from sync_service.errors import StateError
from sync_service.logging import redact
from sync_service.models import BatchStatus, Position, Rejection, StoredContact
from sync_service.state import BatchRecord, RunRecord, StateStore
from sync_service.state.engine import transaction
from sync_service.state.tables import batches


class ReadOnlyState:
    """The state the plan reads; a store without a schema yet reads as empty (plan writes none)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        try:
            store.pipelines()
            self.empty = False
        except StateError:
            self.empty = True

    def get_watermark(self, pipeline: str) -> Position | None:
        return None if self.empty else self.store.get_watermark(pipeline)

    def get_contacts(self, pipeline: str, keys: Sequence[str]) -> dict[str, StoredContact]:
        return {} if self.empty else self.store.get_contacts(pipeline, keys)

    def get_owners(self, pipeline: str, emails: Sequence[str]) -> dict[str, str]:
        return {} if self.empty else self.store.get_owners(pipeline, emails)

    def get_holders(self, pipeline: str, emails: Sequence[str]) -> dict[str, list[str]]:
        return {} if self.empty else self.store.get_holders(pipeline, emails)

    def get_rejections(self, pipeline: str, keys: Sequence[str]) -> dict[str, Rejection]:
        return {} if self.empty else self.store.get_rejections(pipeline, keys)

    def live_keys(self, pipeline: str) -> Iterator[list[str]]:
        return iter(()) if self.empty else self.store.live_keys(pipeline)


def status_rows(store: StateStore, configured: Sequence[str]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys([*configured, *store.pipelines()]))
    rows = []
    for name in names:
        run = store.last_run(name)
        batch = store.last_batch(name)
        mark = store.get_watermark(name)
        rows.append({
            "pipeline": name,
            "configured": name in configured,
            "last_run": None if run is None else {
                "kind": str(run.kind), "outcome": str(run.outcome),
                "started_at": run.started_at, "finished_at": run.finished_at,
                "counts": dict(run.counts), "error": redact(run.error) if run.error else None,
            },
            "watermark": None if mark is None else {"cursor": str(mark.cursor),
                                                     "key": str(mark.key)},
            "contacts_tracked": store.count_contacts(name),
            "rejected": store.count_rejections(name),
            "audience": store.audience_counts(name),  # opt-outs and events (consent.py, events.py)
            "last_import": None if batch is None else {
                "batch_id": batch.id, "import_id": batch.import_id, "status": str(batch.status),
                "size": batch.size, "created": batch.created_count,
                "updated": batch.updated_count, "over_limit": _over_limit(batch, run),
                "finished_at": batch.finished_at, "error": batch.error,
            },
        })
    return rows


def _over_limit(batch: BatchRecord, run: RunRecord | None) -> int | None:
    """Contacts over the quota in the last import; a failed batch keeps no counts, so a batch
    that failed in the last run takes that run's ``over_limit`` count."""
    if batch.over_limit_count is not None or run is None or batch.run_id != run.id:
        return batch.over_limit_count
    return run.counts.get("over_limit")


def run_import_counts(store: StateStore, run_id: int | None) -> dict[str, int] | None:
    """What Mailtrap reported for the run's finished imports: contacts created and updated.

    These are Mailtrap's own counts (an address it already knew is "updated" even when the
    job found it new to the pipeline). None when the run has no id.
    """
    if run_id is None:
        return None
    query = sa.select(
        sa.func.count(), sa.func.coalesce(sa.func.sum(batches.c.created_count), 0),
        sa.func.coalesce(sa.func.sum(batches.c.updated_count), 0),
    ).where(batches.c.run_id == run_id, batches.c.status == str(BatchStatus.FINISHED))
    with transaction(store.engine, "read the run's imports", write=False) as conn:
        imports, created, updated = conn.execute(query).one()
    return {"imports": int(imports), "created": int(created), "updated": int(updated)}
