"""Prometheus metrics for the sync job, the Mailtrap client and the daemon.

Contract:

- A ``Metrics`` instance owns its own ``CollectorRegistry``; nothing is registered globally, so
  tests and several instances in one process never collide. Instances are cheap: always pass a real
  one rather than a no-op stand-in.
- Callers use the small typed methods below and never touch prometheus objects. Label values that
  would grow without bound are not accepted: outcomes, import statuses and contact results are
  checked against fixed sets (a wrong one is a programming error and raises ``ValueError``).
- Every family is named ``mailtrap_sync_*``. The watermark lag is computed when the metrics are
  collected (now minus the stored watermark), so it keeps growing between runs, which is what an
  alert on a stuck pipeline needs. Only temporal cursors (``datetime``, ``date``) have a lag; naive
  datetimes are taken as UTC and dates as midnight UTC.
- All methods are thread-safe (the job, the client and the HTTP listener run on different threads).
- ``imports_total{status="rejected"}``: a 422 answer to an import request (Mailtrap refused the
  import as posted). ``request_done`` counts it for the pipeline bound in the logging context
  (the job binds ``pipeline`` around its run, and the client calls the hook on the job's thread).
- ``last_api_answer`` tells readiness when Mailtrap last answered anyone in this process, so
  ``/readyz`` can rely on the sync's own traffic instead of queueing behind its pacing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "mailtrap_sync"

RUN_OUTCOMES = frozenset({"succeeded", "failed", "interrupted", "busy"})
CONTACT_RESULTS = ("sent", "unchanged", "invalid", "duplicate", "rejected")
IMPORT_STATUSES = frozenset({"finished", "failed", "rejected"})

# Runs last from seconds (nothing changed) to hours (a first backfill of millions of rows).
RUN_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                        7200.0, 14400.0, 28800.0)


class _WatermarkLag(Collector):
    """Yields ``watermark_lag_seconds`` per pipeline, computed at collection time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._watermarks: dict[str, float] = {}

    def set(self, pipeline: str, timestamp: float | None) -> None:
        with self._lock:
            if timestamp is None:
                self._watermarks.pop(pipeline, None)
            else:
                self._watermarks[pipeline] = timestamp

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_watermark_lag_seconds",
            "Seconds between now and the pipeline's temporal watermark cursor.",
            labels=["pipeline"],
        )
        now = self._clock()
        with self._lock:
            items = sorted(self._watermarks.items())
        for pipeline, timestamp in items:
            family.add_metric([pipeline], max(0.0, now - timestamp))
        yield family

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting keeps the registry from calling the clock on register.
        yield GaugeMetricFamily(f"{PREFIX}_watermark_lag_seconds", "", labels=["pipeline"])


def _cursor_timestamp(cursor: object) -> float | None:
    """Unix seconds of a temporal cursor; None for anything else (ids, versions, strings)."""
    if isinstance(cursor, datetime):
        aware = cursor if cursor.tzinfo is not None else cursor.replace(tzinfo=UTC)
        return aware.timestamp()
    if isinstance(cursor, date):
        return datetime(cursor.year, cursor.month, cursor.day, tzinfo=UTC).timestamp()
    return None


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return value


class Metrics:
    """The project's metric families on a private registry, behind typed methods."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._monotonic = monotonic
        self._answer_lock = threading.Lock()
        self._last_answer: tuple[float, int] | None = None
        self._define_run_families()
        self._define_api_families()
        self._define_state_families()
        self._define_consent_families()
        self._lag = _WatermarkLag(clock)
        self.registry.register(self._lag)

    def _define_run_families(self) -> None:
        reg = self.registry
        self._runs = Counter(f"{PREFIX}_runs", "Pipeline runs by outcome.",
                             ["pipeline", "outcome"], registry=reg)
        self._run_duration = Histogram(
            f"{PREFIX}_run_duration_seconds", "Wall-clock duration of pipeline runs.",
            ["pipeline"], buckets=RUN_DURATION_BUCKETS, registry=reg)
        self._contacts = Counter(f"{PREFIX}_contact_results",
                                 "Contacts handled by runs, by result.",
                                 ["pipeline", "result"], registry=reg)
        self._imports = Counter(f"{PREFIX}_imports", "Mailtrap contact imports by final status.",
                                ["pipeline", "status"], registry=reg)
        self._over_limit = Counter(
            f"{PREFIX}_contacts_over_limit",
            "Contacts Mailtrap did not import because the account's contact limit was reached.",
            ["pipeline"], registry=reg)

    def _define_api_families(self) -> None:
        reg = self.registry
        self._requests = Counter(
            f"{PREFIX}_api_requests",
            "Mailtrap API requests by endpoint group and HTTP status ('error' when no response).",
            ["endpoint", "status"], registry=reg)
        self._rate_limited = Counter(
            f"{PREFIX}_api_rate_limited", "Mailtrap API answers with 429 Too Many Requests.",
            ["endpoint"], registry=reg)

    def _define_state_families(self) -> None:
        reg = self.registry
        self._last_success = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds",
            "Unix time at which the pipeline's last successful run finished.",
            ["pipeline"], registry=reg)
        self._tracked = Gauge(f"{PREFIX}_contacts_tracked",
                              "Contacts whose confirmed hash the state store holds.",
                              ["pipeline"], registry=reg)
        self._rejected = Gauge(f"{PREFIX}_rejected_contacts",
                               "Rejected contacts currently on record, awaiting a retry.",
                               ["pipeline"], registry=reg)

    def run_finished(
        self, pipeline: str, outcome: str, duration_s: float, counts: Mapping[str, int],
    ) -> None:
        """Record one finished run.

        ``outcome`` is succeeded, failed, interrupted or busy (the lease was held elsewhere; no
        duration or counts are recorded for it). Of ``counts`` only the contact results (sent,
        unchanged, invalid, duplicate, rejected) are counted; other keys the job keeps are ignored.
        """
        self._runs.labels(pipeline, _check(outcome, RUN_OUTCOMES, "run outcome")).inc()
        if outcome == "busy":
            return
        self._run_duration.labels(pipeline).observe(max(0.0, duration_s))
        for result in CONTACT_RESULTS:
            n = counts.get(result, 0)
            if n:
                self._contacts.labels(pipeline, result).inc(n)
        if outcome == "succeeded":
            self._last_success.labels(pipeline).set(self._clock())

    def import_finished(self, pipeline: str, status: str, over_limit: int = 0) -> None:
        """Record an import reaching a final status (finished, failed or rejected with a 422)."""
        self._imports.labels(pipeline, _check(status, IMPORT_STATUSES, "import status")).inc()
        if over_limit > 0:
            self._over_limit.labels(pipeline).inc(over_limit)

    def request_done(self, group: str, status: int | None) -> None:
        """Record one Mailtrap API request; ``status`` 0 or None: no response (timeout, reset).

        The signature fits ``MailtrapClient(on_response=...)``, which reports 0 for no response.
        """
        self._requests.labels(group, str(status) if status else "error").inc()
        if status == 429:
            self._rate_limited.labels(group).inc()
        if status == 422 and group == "imports":
            pipeline = structlog.contextvars.get_contextvars().get("pipeline")
            if isinstance(pipeline, str):
                self.import_finished(pipeline, "rejected")
        with self._answer_lock:
            self._last_answer = (self._monotonic(), status or 0)

    def last_api_answer(self) -> tuple[float, int] | None:
        """Seconds since Mailtrap last answered (monotonic) and its status (0: no answer)."""
        with self._answer_lock:
            seen = self._last_answer
        return None if seen is None else (max(0.0, self._monotonic() - seen[0]), seen[1])

    def set_watermark(self, pipeline: str, cursor_value: object) -> None:
        """Track the lag behind a temporal watermark; other cursor types clear the series."""
        self._lag.set(pipeline, _cursor_timestamp(cursor_value))

    def set_tracked(self, pipeline: str, n: int) -> None:
        """Set how many contacts the state store tracks for the pipeline."""
        self._tracked.labels(pipeline).set(n)

    def set_rejected(self, pipeline: str, n: int) -> None:
        """Set how many rejected contacts are on record for the pipeline."""
        self._rejected.labels(pipeline).set(n)

    # consent branch: the events backlog (queued events not yet sent, including those waiting)
    def _define_consent_families(self) -> None:
        self._events_backlog = Gauge(
            f"{PREFIX}_events_backlog",
            "Custom events read from the events source and not yet sent to Mailtrap.",
            ["pipeline"], registry=self.registry)

    def set_events_backlog(self, pipeline: str, n: int) -> None:
        """Set how many custom events of the pipeline are queued and not yet sent."""
        self._events_backlog.labels(pipeline).set(n)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every family."""
        return generate_latest(self.registry)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Body and content type for a scrape, negotiated from its Accept header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
