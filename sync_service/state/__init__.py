"""State store package: SQLAlchemy tables and the StateStore API."""

from __future__ import annotations

from sync_service.state.store import BatchRecord, RejectionRecord, RunRecord, StateStore

__all__ = ["BatchRecord", "RejectionRecord", "RunRecord", "StateStore"]
