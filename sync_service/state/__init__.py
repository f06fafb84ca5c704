"""State store package: SQLAlchemy tables and the StateStore API."""

from __future__ import annotations

from sync_service.state.engine import DEFAULT_URL
from sync_service.state.reader import StateReader
from sync_service.state.records import BatchRecord, RejectionRecord, RunRecord
from sync_service.state.store import StateStore

__all__ = [
    "DEFAULT_URL", "BatchRecord", "RejectionRecord", "RunRecord", "StateReader", "StateStore",
]
