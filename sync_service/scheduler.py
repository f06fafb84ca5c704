"""The daemon (`mailtrap-sync run`): APScheduler 3 runs each pipeline on its own schedule.

Contract:
- each pipeline runs on its ``schedule`` (cron) or ``every`` (interval; default
  ``[daemon] every``), with jitter, never overlapping itself (``max_instances=1``), missed runs
  coalesced into one, and a run later than the misfire grace skipped;
- every run takes the pipeline's lease in the state store, so replicas sharing a PostgreSQL state
  store never run one pipeline twice at once; a busy pipeline is logged and counted, not failed;
- a failing run is logged and recorded and the daemon carries on; after ``failure_threshold``
  failures in a row the pipeline pauses, for ``failure_backoff`` doubling up to the maximum;
- SIGTERM/SIGINT stop scheduling, ask running passes to stop after their current step (they
  commit what is confirmed), and the process exits 0 within the grace period (1 if work was
  still running when it ran out);
- ``/healthz``, ``/readyz`` and ``/metrics`` are served on ``[web] listen``.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sync_service.errors import PipelineBusy, SyncError
from sync_service.job import RunResult, SyncJob, new_owner
from sync_service.mailtrap.client import MailtrapClient
from sync_service.metrics import Metrics
from sync_service.models import ImportResult, RunKind, RunOutcome
from sync_service.runtime import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, build_client, open_store
from sync_service.settings import AppSettings, PipelineSettings, parse_duration
from sync_service.state import StateStore
from sync_service.web import WebServer, create_app, parse_listen

log = structlog.get_logger(__name__)
DAEMON_LEASE = "__daemon__"
READY_CACHE_S = 30.0


class MetricsObserver:
    """Feeds the job's progress into the Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def records_read(self, pipeline: str, count: int) -> None:
        """Reading progress is visible through run durations; nothing per chunk."""

    def import_done(self, pipeline: str, result: ImportResult) -> None:
        self.metrics.import_finished(pipeline, result.status,
                                     result.contacts_over_limit_count or 0)

    def request_done(self, group: str, status: int) -> None:
        self.metrics.request_done(group, status)


@dataclass
class _Health:
    failures: int = 0
    paused_until: float = 0.0


_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DOW_NUMBER = re.compile(r"(?<![/\d])\d+")


def crontab_trigger(expression: str, *, jitter: float | None = None) -> CronTrigger:
    """A CronTrigger from a standard 5-field crontab line.

    APScheduler 3 numbers weekdays from Monday = 0, crontab from Sunday = 0 (7 too), so numeric
    day-of-week values are turned into names first: ``0 9 * * 1-5`` means Monday to Friday here
    as it does in crontab.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} has {len(fields)} fields; crontab lines have 5")
    minute, hour, day, month, dow = fields

    def name(match: re.Match[str]) -> str:
        number = int(match.group(0))
        if number > 7:
            raise ValueError(f"day of week {number} is not 0-7")
        return _DOW_NAMES[number]

    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_DOW_NUMBER.sub(name, dow), timezone=UTC,
                       jitter=int(jitter) if jitter else None)


def trigger_for(pipeline: PipelineSettings, settings: AppSettings) -> BaseTrigger:
    """The pipeline's cron or interval trigger, with its jitter."""
    daemon = settings.daemon
    configured = parse_duration(daemon.jitter) if daemon.jitter is not None else None
    if pipeline.schedule:
        return crontab_trigger(pipeline.schedule,
                               jitter=10.0 if configured is None else configured)
    interval = parse_duration(pipeline.every or daemon.every)
    jitter = min(interval * 0.1, 30.0) if configured is None else configured
    return IntervalTrigger(seconds=interval, timezone=UTC, jitter=int(jitter) or None)


class Daemon:
    """Schedules every configured pipeline until told to stop."""

    def __init__(self, settings: AppSettings, *, stop: threading.Event,
                 transport: Any = None) -> None:
        self.settings = settings
        self.stop = stop
        self.owner = new_owner()
        self.metrics = Metrics()
        self.observer = MetricsObserver(self.metrics)
        self._transport = transport
        self._health: dict[str, _Health] = {p.name: _Health() for p in settings.pipelines}
        self._scheduler: BackgroundScheduler | None = None
        self._ready_cache: tuple[float, str | None] = (0.0, None)

    def run(self) -> int:
        store = open_store(self.settings)
        client = build_client(self.settings, transport=self._transport, observer=self.observer)
        try:
            if not self._claim_sqlite(store):
                return EXIT_CONFIG
            return self._serve(store, client)
        finally:
            client.close()
            store.release_lease(DAEMON_LEASE, self.owner)
            store.close()

    def _claim_sqlite(self, store: StateStore) -> bool:
        """SQLite serves one process: refuse to share it with another daemon, saying so."""
        if store.engine.dialect.name != "sqlite":
            return True
        if store.acquire_lease(DAEMON_LEASE, self.owner, 90.0):
            return True
        holder = store.lease_holder(DAEMON_LEASE)
        log.error("daemon.sqlite_shared", holder=holder[0] if holder else None,
                  hint="SQLite state stores serve one daemon; use PostgreSQL for replicas")
        return False

    def _serve(self, store: StateStore, client: MailtrapClient) -> int:
        web = self._start_web(store, client)
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max(1, min(4, len(self._health))))},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": int(parse_duration(
                              self.settings.daemon.misfire_grace)) or None},
        )
        for pipeline in self.settings.pipelines:
            scheduler.add_job(self._tick, trigger_for(pipeline, self.settings),
                              args=[pipeline, store, client], id=pipeline.name,
                              name=pipeline.name, next_run_time=datetime.now(UTC))
        if store.engine.dialect.name == "sqlite":
            scheduler.add_job(store.renew_lease, IntervalTrigger(seconds=30),
                              args=[DAEMON_LEASE, self.owner, 90.0], id=DAEMON_LEASE)
        self._scheduler = scheduler
        scheduler.start()
        log.info("daemon.started", pipelines=[p.name for p in self.settings.pipelines],
                 listen=self.settings.web.listen if web else None)
        self.stop.wait()
        code = self._shutdown(scheduler)
        if web is not None:
            web.stop(timeout=5.0)
        return code

    def _shutdown(self, scheduler: BackgroundScheduler) -> int:
        grace = parse_duration(self.settings.daemon.grace_period)
        log.info("daemon.stopping", grace_s=grace)
        done = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
        done.start()
        done.join(grace)
        if done.is_alive():
            log.error("daemon.grace_expired", grace_s=grace)
            return EXIT_FAILED
        log.info("daemon.stopped")
        return EXIT_OK

    def _start_web(self, store: StateStore, client: MailtrapClient) -> WebServer | None:
        if not self.settings.web.enabled:
            return None
        host, port = parse_listen(self.settings.web.listen)
        app = create_app(self.metrics, self._alive, self._ready_checks(store, client))
        web = WebServer(app, host, port)
        web.start()
        return web

    def _alive(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def _ready_checks(self, store: StateStore, client: MailtrapClient
                      ) -> dict[str, Callable[[], str | None]]:
        """Named checks, so a hung one is named by /readyz."""

        def state_store() -> str | None:
            try:
                store.pipelines()
            except SyncError as exc:
                return str(exc)
            return None

        def mailtrap() -> str | None:
            checked_at, error = self._ready_cache
            if time.monotonic() - checked_at > READY_CACHE_S or error is not None:
                try:
                    client.resolve_account()
                    error = None
                except SyncError as exc:
                    error = str(exc)
                self._ready_cache = (time.monotonic(), error)
            return error

        return {"state_store": state_store, "mailtrap": mailtrap}

    # one scheduled pass ----------------------------------------------------------------------
    def _tick(self, pipeline: PipelineSettings, store: StateStore,
              client: MailtrapClient) -> None:
        health = self._health[pipeline.name]
        if self.stop.is_set():
            return
        if time.monotonic() < health.paused_until:
            log.info("run.skipped_backoff", pipeline=pipeline.name,
                     resumes_in_s=round(health.paused_until - time.monotonic()))
            return
        job = SyncJob(settings=self.settings, pipeline=pipeline, store=store, client=client,
                      stop=self.stop, owner=self.owner, observer=self.observer)
        try:
            result = job.run(RunKind.SYNC)
        except PipelineBusy as exc:
            log.info("run.busy", pipeline=pipeline.name, reason=str(exc))
            self.metrics.run_finished(pipeline.name, "busy", 0.0, {})
            return
        except SyncError as exc:  # the state store itself failed before the run was recorded
            log.error("run.not_started", pipeline=pipeline.name, error=str(exc))
            self._note_failure(pipeline.name, health)
            return
        self._after(result, store, health)

    def _after(self, result: RunResult, store: StateStore, health: _Health) -> None:
        self.metrics.run_finished(result.pipeline, str(result.outcome), result.duration_s,
                                  result.counts)
        try:
            mark = store.get_watermark(result.pipeline)
            self.metrics.set_watermark(result.pipeline, mark.cursor if mark else None)
            self.metrics.set_tracked(result.pipeline, store.count_contacts(result.pipeline))
            self.metrics.set_rejected(result.pipeline, store.count_rejections(result.pipeline))
        except SyncError as exc:
            log.warning("metrics.state_unavailable", error=str(exc))
        if result.outcome is RunOutcome.FAILED:
            self._note_failure(result.pipeline, health)
        elif result.outcome is RunOutcome.SUCCEEDED:
            health.failures = 0

    def _note_failure(self, name: str, health: _Health) -> None:
        daemon = self.settings.daemon
        health.failures += 1
        over = health.failures - daemon.failure_threshold
        if over >= 0:
            pause = min(parse_duration(daemon.failure_backoff) * 2 ** over,
                        parse_duration(daemon.failure_backoff_max))
            pause *= random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not security
            health.paused_until = time.monotonic() + pause
            log.error("pipeline.backing_off", pipeline=name, failures=health.failures,
                      pause_s=round(pause))
