"""The daemon (`mailtrap-sync run`): APScheduler 3 runs each pipeline on its own schedule.

Contract:
- a pipeline runs on its ``schedule`` (a crontab line, in UTC, meaning what it means to cron:
  Sunday = 0 or 7; both day fields restricted = either matches) or ``every`` (default
  ``[daemon] every``), with jitter, never overlapping itself, missed runs coalesced into one,
  and a run later than the misfire grace skipped;
- every run takes the pipeline's lease, so replicas sharing a PostgreSQL state store never run
  one pipeline twice at once; a busy pipeline is logged and counted, not failed;
- a failing run is logged and recorded and the daemon carries on; ``failure_threshold`` failures
  in a row pause the pipeline (``Backoff``);
- a SQLite state store serves one daemon, which keeps a claim on it renewed. Another daemon
  watches the claim: renewed, it refuses (``ConfigError``, exit 2); lapsed (its holder died), it
  takes it over;
- SIGTERM/SIGINT stop scheduling; running passes stop after their current step and commit; the
  result is 0 within the grace period, else 1, and with ``exit_hard`` (the CLI) the process then
  ends at once rather than wait for the step (write-ahead state makes that safe);
- ``/healthz``, ``/readyz`` and ``/metrics`` are served on ``[web] listen``;
- APScheduler's plain-text log records are muted (they would break the JSON lines); what they say
  is logged as events: ``run.skipped_overlap``, ``run.missed``, ``run.crashed``.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sync_service import reconcile_schedule
from sync_service.crontab import crontab_trigger
from sync_service.errors import ConfigError, PipelineBusy, SyncError
from sync_service.housekeeping import PRUNE_EVERY_S, prune
from sync_service.job import RunResult, SyncJob, new_owner
from sync_service.mailtrap.client import MailtrapClient
from sync_service.metrics import Metrics
from sync_service.models import ImportResult, RunKind, RunOutcome
from sync_service.settings import AppSettings, DaemonSettings, PipelineSettings
from sync_service.state import StateStore
from sync_service.web import CachedProbe, WebServer, create_app, parse_listen
from sync_service.wiring import EXIT_FAILED, EXIT_OK, api_token, build_client, open_store

log = structlog.get_logger(__name__)
DAEMON_LEASE = "__daemon__"  # the SQLite claim; pipeline names cannot start with "_"
CLAIM_TTL_S, CLAIM_RENEW_S, CLAIM_POLL_S = 30.0, 5.0, 0.5
READY_CACHE_S = 30.0  # a Mailtrap answer younger than this settles readiness
READY_PROBE_TIMEOUT_S = 4.0  # under web.DEFAULT_READY_TIMEOUT_S
PRUNE_DELAY_S = 60.0  # the first prune, after the daemon's start-up runs
MAX_PARALLEL_RUNS = 4  # memory grows with concurrent batches; the API budget is shared anyway


class MetricsObserver:
    """Feeds the job's progress into the Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def records_read(self, pipeline: str, count: int) -> None:
        """Reading progress is visible through run durations; nothing per chunk."""

    def import_done(self, pipeline: str, result: ImportResult) -> None:
        self.metrics.import_finished(pipeline, result.status,
                                     result.contacts_over_limit_count or 0)

    def events_backlog(self, pipeline: str, count: int) -> None:  # consent branch
        self.metrics.set_events_backlog(pipeline, count)

    def request_done(self, group: str, status: int) -> None:
        self.metrics.request_done(group, status)


def trigger_for(pipeline: PipelineSettings, settings: AppSettings) -> BaseTrigger:
    """The pipeline's cron or interval trigger, with its jitter."""
    daemon = settings.daemon
    configured = daemon.jitter
    if pipeline.schedule:
        return crontab_trigger(pipeline.schedule,
                               jitter=10.0 if configured is None else configured)
    interval = pipeline.every or daemon.every
    jitter = min(interval * 0.1, 30.0) if configured is None else configured
    return IntervalTrigger(seconds=interval, timezone=UTC, jitter=jitter or None)


# failure backoff ------------------------------------------------------------------------------
class Backoff:
    """One pipeline's failures in a row, and the pause they have earned.

    From the ``threshold``-th failure in a row the pipeline pauses for ``first`` seconds, doubled
    with each further failure, at most ``maximum``; ±10 % jitter keeps replicas out of step. A
    success resets it.
    """

    def __init__(self, threshold: int, first: float, maximum: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 spread: Callable[[], float] = lambda: random.uniform(0.9, 1.1),  # noqa: S311
                 ) -> None:
        self.threshold, self.first, self.maximum = threshold, first, maximum
        self.failures = 0
        self._clock, self._spread = clock, spread
        self._until = 0.0

    @classmethod
    def from_settings(cls, daemon: DaemonSettings, *,
                      clock: Callable[[], float] = time.monotonic) -> Backoff:
        return cls(daemon.failure_threshold, daemon.failure_backoff, daemon.failure_backoff_max,
                   clock=clock)

    def remaining(self) -> float:
        """Seconds until the pipeline may run again (0 when it is not paused)."""
        return max(0.0, self._until - self._clock())

    def failed(self) -> float:
        """Count a failure; returns the pause it starts, in seconds (0 below the threshold)."""
        self.failures += 1
        over = self.failures - self.threshold
        if over < 0:
            return 0.0
        pause = min(self.first * 2.0 ** min(over, 32) * self._spread(), self.maximum)
        self._until = self._clock() + pause
        return pause

    def succeeded(self) -> None:
        self.failures, self._until = 0, 0.0


# the daemon -----------------------------------------------------------------------------------
class Daemon:
    """Schedules every configured pipeline until ``stop`` is set."""

    def __init__(self, settings: AppSettings, *, stop: threading.Event,
                 transport: httpx.BaseTransport | None = None, exit_hard: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.stop = stop
        self.exit_hard = exit_hard
        self.owner = new_owner()
        self.metrics = Metrics()
        self.observer = MetricsObserver(self.metrics)
        self.backoff = {p.name: Backoff.from_settings(settings.daemon, clock=clock)
                        for p in settings.pipelines}
        self._transport = transport
        self._scheduler: BackgroundScheduler | None = None
        self._probe_client: MailtrapClient | None = None
        self._running: set[str] = set()

    def run(self) -> int:
        """Serve until stopped; the exit code. ConfigError if a SQLite store has its daemon."""
        with self.services() as (store, client):
            if not self._claim_sqlite(store):
                return EXIT_OK  # stopped while waiting for the claim
            try:
                code = self._serve(store, client)
            finally:
                if store.engine.dialect.name == "sqlite":
                    store.release_lease(DAEMON_LEASE, self.owner)
        if code != EXIT_OK and self.exit_hard:
            sys.stderr.flush()
            os._exit(code)  # worker threads still in a step would keep the process alive
        return code

    @contextmanager
    def services(self) -> Iterator[tuple[StateStore, MailtrapClient]]:
        """The state store and Mailtrap client that every pass shares; closed at the end."""
        with ExitStack() as stack:
            client = stack.enter_context(build_client(
                self.settings, transport=self._transport, observer=self.observer))
            self._probe_client = stack.enter_context(self._readiness_client())
            store = open_store(self.settings)
            stack.callback(store.close)
            yield store, client

    def _readiness_client(self) -> MailtrapClient:
        """/readyz's own client: no pacer (it must not queue behind a run), no retries, a short
        timeout. It asks at most once per READY_CACHE_S, and only when no run has talked to
        Mailtrap within that time (``CachedProbe``)."""
        cfg = self.settings.mailtrap
        return MailtrapClient(token=api_token(self.settings), base_url=cfg.api_url,
                              account_id=cfg.account_id, transport=self._transport,
                              timeout=min(cfg.timeout, READY_PROBE_TIMEOUT_S), max_retries=0)

    # SQLite: one daemon per state store ----------------------------------------------------
    def _claim_sqlite(self, store: StateStore) -> bool:
        """Claim a SQLite store for this daemon; False if stopped while waiting.

        A claim held elsewhere is watched: renewed means its daemon is alive (ConfigError); a
        claim that lapses belonged to a daemon that died, and is taken over.
        """
        if store.engine.dialect.name != "sqlite":
            return True
        first_seen: tuple[str, datetime] | None = None
        deadline = time.monotonic() + CLAIM_TTL_S + CLAIM_RENEW_S
        while not store.acquire_lease(DAEMON_LEASE, self.owner, CLAIM_TTL_S):
            holder = store.lease_holder(DAEMON_LEASE)
            if first_seen is None and holder is not None:
                first_seen = holder
                log.warning("daemon.sqlite_claimed", holder=holder[0],
                            hint="waiting to see whether that daemon is alive")
            elif holder is not None and (holder != first_seen or time.monotonic() > deadline):
                raise ConfigError(
                    f"another mailtrap-sync daemon ({holder[0]}) is using this SQLite state "
                    "store, and SQLite serves one process: stop that one, or use PostgreSQL "
                    "([state] url) to run several replicas")
            if self.stop.wait(CLAIM_POLL_S):
                return False
        if first_seen is not None:
            log.warning("daemon.sqlite_taken_over", previous=first_seen[0])
        return True

    def _renew_claim(self, store: StateStore) -> None:
        try:
            if not store.renew_lease(DAEMON_LEASE, self.owner, CLAIM_TTL_S):
                log.error("daemon.sqlite_claim_lost",
                          hint="another daemon took over this SQLite state store")
        except SyncError as exc:
            log.warning("daemon.sqlite_claim_renew_failed", error=str(exc))

    # serving -----------------------------------------------------------------------------------
    def _serve(self, store: StateStore, client: MailtrapClient) -> int:
        web = self._start_web(store, client)
        deadline: float | None = None
        try:
            _mute_apscheduler()
            scheduler = self._scheduler = self.build_scheduler(store, client)
            scheduler.start()
            log.info("daemon.started", pipelines=[p.name for p in self.settings.pipelines],
                     listen=self.settings.web.listen if web else None,
                     state_store=store.engine.dialect.name)
            self.stop.wait()
            grace = self.settings.daemon.grace_period
            deadline = time.monotonic() + grace
            return self._shutdown(scheduler, grace, deadline)
        finally:
            if web is not None:
                left = 5.0 if deadline is None else deadline - time.monotonic()
                web.stop(timeout=max(1.0, min(5.0, left)))

    def build_scheduler(self, store: StateStore, client: MailtrapClient) -> BackgroundScheduler:
        """The scheduler with every pipeline's job (and the SQLite claim's renewal), unstarted."""
        workers = max(1, min(MAX_PARALLEL_RUNS, len(self.settings.pipelines)))
        scheduler = BackgroundScheduler(timezone=UTC, executors={
            "default": ThreadPoolExecutor(workers, {"thread_name_prefix": "run"}),
            "housekeeping": ThreadPoolExecutor(1, {"thread_name_prefix": "housekeeping"}),
            "retention": ThreadPoolExecutor(1, {"thread_name_prefix": "retention"}),
        })
        scheduler.add_listener(self._on_event,
                               EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        grace = max(1, round(self.settings.daemon.misfire_grace))
        for pipeline in self.settings.pipelines:
            scheduler.add_job(self.tick, trigger_for(pipeline, self.settings),
                              args=[pipeline, store, client], id=pipeline.name,
                              name=pipeline.name, next_run_time=datetime.now(UTC),
                              max_instances=1, coalesce=True, misfire_grace_time=grace)
            reconcile_schedule.schedule(self, scheduler, pipeline, store, client)
        # Its own thread: a long prune must not delay the SQLite claim's renewal.
        scheduler.add_job(self._prune, IntervalTrigger(seconds=PRUNE_EVERY_S, timezone=UTC),
                          args=[store], id="__retention__", executor="retention",
                          next_run_time=datetime.now(UTC) + timedelta(seconds=PRUNE_DELAY_S),
                          max_instances=1, coalesce=True)
        if store.engine.dialect.name == "sqlite":  # its own thread: runs must not starve it
            scheduler.add_job(self._renew_claim, IntervalTrigger(seconds=CLAIM_RENEW_S),
                              args=[store], id=DAEMON_LEASE, executor="housekeeping")
        return scheduler

    def _prune(self, store: StateStore) -> None:
        """Retention (``state.retention``); a failure is logged and tried again next time."""
        try:
            prune(self.settings, store, self.settings.pipelines)
        except Exception as exc:
            log.warning("state.prune_failed", error=str(exc),
                        exc_info=not isinstance(exc, SyncError))

    def _shutdown(self, scheduler: BackgroundScheduler, grace: float, deadline: float) -> int:
        log.info("daemon.stopping", grace_s=grace, running=sorted(self._running.copy()))
        done = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True,
                                name="scheduler-shutdown")
        done.start()
        done.join(max(0.0, deadline - time.monotonic()))
        if done.is_alive():
            log.error("daemon.grace_expired", grace_s=grace, running=sorted(self._running.copy()))
            return EXIT_FAILED
        log.info("daemon.stopped")
        return EXIT_OK

    def _on_event(self, event: Any) -> None:
        """APScheduler's notices as structured events (its own log records are muted)."""
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info("run.skipped_overlap", pipeline=event.job_id,
                     reason="the previous run is still going")
        elif event.code == EVENT_JOB_MISSED:
            log.warning("run.missed", pipeline=event.job_id,
                        scheduled_at=event.scheduled_run_time.isoformat())
        elif event.code == EVENT_JOB_ERROR:
            log.error("run.crashed", pipeline=event.job_id, error=repr(event.exception))

    def _start_web(self, store: StateStore, client: MailtrapClient) -> WebServer | None:
        if not self.settings.web.enabled:
            return None
        host, port = parse_listen(self.settings.web.listen)
        web = WebServer(create_app(self.metrics, self._alive, self._ready_checks(store, client)),
                        host, port)
        web.start()
        return web

    def _alive(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def _ready_checks(self, store: StateStore, client: MailtrapClient
                      ) -> dict[str, Callable[[], str | None]]:
        """Named checks, so a hung one is named by /readyz."""

        def state_store() -> str | None:
            try:
                store.lease_holder(DAEMON_LEASE)  # one primary-key read: cheap at any size
            except SyncError as exc:
                return str(exc)
            return None

        # Never through ``client``: its requests queue behind the sync's pacing.
        probe = self._probe_client or client  # services() always sets it; a fallback for tests
        mailtrap = CachedProbe(probe.resolve_account, self.metrics.last_api_answer,
                               fresh_s=READY_CACHE_S)

        return {"state_store": state_store, "mailtrap": mailtrap}

    # one scheduled pass ----------------------------------------------------------------------
    def tick(self, pipeline: PipelineSettings, store: StateStore,
             client: MailtrapClient) -> RunResult | None:
        """One scheduled pass of ``pipeline``, unless stopping, paused, or leased elsewhere."""
        backoff = self.backoff[pipeline.name]
        if self.stop.is_set():
            return None
        if (remaining := backoff.remaining()) > 0:
            log.info("run.skipped_backoff", pipeline=pipeline.name, failures=backoff.failures,
                     resumes_in_s=round(remaining))
            return None
        job = SyncJob(settings=self.settings, pipeline=pipeline, store=store, client=client,
                      stop=self.stop, owner=self.owner, observer=self.observer)
        self._running.add(pipeline.name)
        try:
            result = job.run(RunKind.SYNC)
        except PipelineBusy as exc:
            log.info("run.busy", pipeline=pipeline.name, reason=str(exc))
            self.metrics.run_finished(pipeline.name, "busy", 0.0, {})
            return None
        except Exception as exc:  # the run could not be started or recorded (state store down)
            log.error("run.not_started", pipeline=pipeline.name, error=str(exc),
                      exc_info=not isinstance(exc, SyncError))
            self.metrics.run_finished(pipeline.name, "failed", 0.0, {})
            self._failed(pipeline.name, backoff)
            return None
        finally:
            self._running.discard(pipeline.name)
        self._after(result, store, backoff)
        return result

    def _after(self, result: RunResult, store: StateStore, backoff: Backoff) -> None:
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
            self._failed(result.pipeline, backoff)
        elif result.outcome is RunOutcome.SUCCEEDED:
            backoff.succeeded()

    def _failed(self, name: str, backoff: Backoff) -> None:
        pause = backoff.failed()
        if pause > 0:
            log.error("pipeline.backing_off", pipeline=name, failures=backoff.failures,
                      pause_s=round(pause, 1))


def _mute_apscheduler() -> None:
    """APScheduler logs plain text; the daemon re-logs what matters as structured events."""
    logger = logging.getLogger("apscheduler")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())  # no "last resort" handler printing to stderr
    logger.propagate = False
