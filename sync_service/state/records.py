"""What the state store hands back about runs, batches and rejections, and how rows become them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import RowMapping

from sync_service.models import BatchStatus, RejectKind, RunKind, RunOutcome


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


def run_from_row(row: RowMapping) -> RunRecord:
    return RunRecord(
        id=row["id"],
        pipeline=row["pipeline"],
        kind=RunKind(row["kind"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=RunOutcome(row["outcome"]),
        counts=json.loads(row["counts"]),
        error=row["error"],
    )


def batch_from_row(row: RowMapping) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        pipeline=row["pipeline"],
        run_id=row["run_id"],
        status=BatchStatus(row["status"]),
        import_id=row["import_id"],
        size=row["size"],
        created_at=row["created_at"],
        posted_at=row["posted_at"],
        finished_at=row["finished_at"],
        created_count=row["created_count"],
        updated_count=row["updated_count"],
        over_limit_count=row["over_limit_count"],
        attempts=row["attempts"],
        error=row["error"],
    )


def rejection_from_row(row: RowMapping) -> RejectionRecord:
    return RejectionRecord(
        pipeline=row["pipeline"],
        source_key=row["source_key"],
        email=row["email"],
        kind=RejectKind(row["kind"]),
        reason=row["reason"],
        run_id=row["run_id"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        attempts=row["attempts"],
    )
