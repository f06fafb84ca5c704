"""The state store: watermarks, confirmed contact hashes, runs, import batches, rejections, leases.

CONTRACT STUB — the signatures below are the API the job codes against. Implementation pending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from sync_service.models import (
    BatchStatus,
    ImportEntry,
    ImportResult,
    Position,
    Rejection,
    RejectKind,
    RunKind,
    RunOutcome,
    StoredContact,
)


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    pipeline: str
    kind: RunKind
    started_at: datetime
    finished_at: datetime | None
    outcome: RunOutcome
    counts: Mapping[str, int]
    error: str | None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    pipeline: str
    run_id: int
    status: BatchStatus
    import_id: int | None
    size: int
    created_at: datetime
    posted_at: datetime | None
    finished_at: datetime | None
    created_count: int | None
    updated_count: int | None
    over_limit_count: int | None
    attempts: int
    error: str | None


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    pipeline: str
    source_key: str
    email: str | None
    kind: RejectKind
    reason: str
    run_id: int | None
    first_seen: datetime
    last_seen: datetime
    attempts: int


class StateStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> StateStore:
        raise NotImplementedError

    def upgrade(self) -> None:
        raise NotImplementedError

    def ensure_schema(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # watermarks
    def get_watermark(self, pipeline: str) -> Position | None:
        raise NotImplementedError

    def set_watermark(self, pipeline: str, position: Position | None) -> None:
        raise NotImplementedError

    # confirmed contacts
    def get_contacts(self, pipeline: str, keys: Sequence[str]) -> dict[str, StoredContact]:
        raise NotImplementedError

    def get_owners(self, pipeline: str, emails: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError

    def count_contacts(self, pipeline: str) -> int:
        raise NotImplementedError

    # runs
    def start_run(self, pipeline: str, kind: RunKind) -> int:
        raise NotImplementedError

    def finish_run(
        self, run_id: int, outcome: RunOutcome, counts: Mapping[str, int], error: str | None = None
    ) -> None:
        raise NotImplementedError

    def last_run(self, pipeline: str) -> RunRecord | None:
        raise NotImplementedError

    def list_runs(self, pipeline: str, limit: int = 20) -> list[RunRecord]:
        raise NotImplementedError

    # batches
    def record_batch(self, pipeline: str, run_id: int, entries: Sequence[ImportEntry]) -> int:
        raise NotImplementedError

    def mark_batch_posted(self, batch_id: int, import_id: int) -> None:
        raise NotImplementedError

    def confirm_batch(
        self, batch_id: int, result: ImportResult, watermark: Position | None = None
    ) -> None:
        raise NotImplementedError

    def fail_batch(
        self, batch_id: int, error: str, status: BatchStatus = BatchStatus.FAILED
    ) -> None:
        raise NotImplementedError

    def open_batches(self, pipeline: str) -> list[BatchRecord]:
        raise NotImplementedError

    def last_batch(self, pipeline: str) -> BatchRecord | None:
        raise NotImplementedError

    def batch_entries(self, batch_id: int) -> list[ImportEntry]:
        raise NotImplementedError

    # rejections
    def record_rejections(
        self, pipeline: str, run_id: int | None, rejections: Sequence[Rejection]
    ) -> None:
        raise NotImplementedError

    def list_rejections(self, pipeline: str, limit: int | None = None) -> list[RejectionRecord]:
        raise NotImplementedError

    def count_rejections(self, pipeline: str) -> int:
        raise NotImplementedError

    def clear_rejections(self, pipeline: str, keys: Sequence[str]) -> None:
        raise NotImplementedError

    # leases
    def acquire_lease(self, pipeline: str, owner: str, ttl_seconds: float) -> bool:
        raise NotImplementedError

    def renew_lease(self, pipeline: str, owner: str, ttl_seconds: float) -> bool:
        raise NotImplementedError

    def release_lease(self, pipeline: str, owner: str) -> None:
        raise NotImplementedError

    def pipelines(self) -> list[str]:
        raise NotImplementedError

    def _unused(self) -> Any:
        return None
