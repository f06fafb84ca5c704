"""The daemon's reconciles: each pipeline with ``reconcile_every`` gets a reconcile job in the
scheduler (``sync_service.reconcile`` does the work; this module only times it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from apscheduler.triggers.interval import IntervalTrigger

from sync_service import reconcile
from sync_service.errors import PipelineBusy, SyncError
from sync_service.job import SyncJob
from sync_service.units import parse_duration

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from sync_service.mailtrap.client import MailtrapClient
    from sync_service.scheduler import Daemon
    from sync_service.settings import PipelineSettings
    from sync_service.state import StateStore

log = structlog.get_logger(__name__)
BUSY_RETRY_S = 300.0  # the daemon's next try when another process holds the pipeline


def schedule(daemon: Daemon, scheduler: BaseScheduler, pipeline: PipelineSettings,
             store: StateStore, client: MailtrapClient) -> None:
    """Add the pipeline's reconcile to the daemon, every ``reconcile_every``.

    The next one is due ``reconcile_every`` after the last one finished (now if there was none),
    so a restarted daemon neither skips nor repeats one. It takes the pipeline's lease, so it
    never overlaps the pipeline's runs; when the lease is busy it waits for the next interval.
    """
    if pipeline.reconcile_every is None:
        return
    every = parse_duration(pipeline.reconcile_every)
    last = store.reconciled_at(pipeline.name)
    due = datetime.now(UTC) if last is None else max(datetime.now(UTC),
                                                     last + timedelta(seconds=every))
    scheduler.add_job(_scheduled, IntervalTrigger(seconds=every),
                      args=[daemon, scheduler, pipeline, store, client],
                      id=f"{pipeline.name}:reconcile", name=f"{pipeline.name} reconcile",
                      next_run_time=due, max_instances=1, coalesce=True)


def _scheduled(daemon: Daemon, scheduler: BaseScheduler, pipeline: PipelineSettings,
               store: StateStore, client: MailtrapClient) -> None:
    if daemon.stop.is_set():
        return
    job = SyncJob(settings=daemon.settings, pipeline=pipeline, store=store, client=client,
                  stop=daemon.stop, owner=daemon.owner, observer=daemon.observer)
    try:
        result = reconcile.reconcile(job)
    except PipelineBusy as exc:
        # Held by another process: try again soon rather than a whole interval later.
        log.info("reconcile.busy", pipeline=pipeline.name, reason=str(exc),
                 retry_in_s=BUSY_RETRY_S)
        scheduler.add_job(_scheduled, "date", args=[daemon, scheduler, pipeline, store, client],
                          run_date=datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_S),
                          id=f"{pipeline.name}:reconcile-retry", replace_existing=True)
        return
    except SyncError as exc:
        log.error("reconcile.not_started", pipeline=pipeline.name, error=str(exc))
        return
    log.info("reconcile.done", pipeline=pipeline.name, outcome=str(result.outcome),
             error=result.error, **result.counts)
