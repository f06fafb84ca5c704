"""Housekeeping of the state store: retention (``state.retention``), for the CLI and the daemon.

``prune`` asks the state store to drop, per pipeline, what is older than the retention and no
longer needed (``state/retention.py`` says exactly what). To tell which rejected keys are gone
from the source, it re-reads them through the pipeline's connector (``Connector.fetch``), a chunk
at a time; with ``reread=False`` only keys the source already reported deleted count as gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sync_service.connector import Connector, load_connector
from sync_service.settings import AppSettings, PipelineSettings, parse_duration
from sync_service.state import StateStore
from sync_service.state.retention import GoneKeys, PruneReport

PRUNE_EVERY_S = 6 * 3600.0  # the daemon's cadence


def retention_cutoff(settings: AppSettings, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(settings.state.retention))


def prune(settings: AppSettings, store: StateStore, pipelines: Sequence[PipelineSettings], *,
          reread: bool = True, now: datetime | None = None) -> list[PruneReport]:
    """Prune each pipeline's old rows; returns what was deleted per pipeline."""
    cutoff = retention_cutoff(settings, now)
    reports = []
    for pipeline in pipelines:
        if not reread:
            reports.append(store.prune(pipeline.name, cutoff))
            continue
        connector = load_connector(pipeline.source.connector)(pipeline.source)
        try:
            connector.check()
            reports.append(store.prune(pipeline.name, cutoff, gone=_gone(connector)))
        finally:
            connector.close()
    return reports


def _gone(connector: Connector) -> GoneKeys:
    def gone(keys: Sequence[str]) -> set[str]:
        present = {record.key_str for record in connector.fetch(list(keys))}
        return set(keys) - present

    return gone
