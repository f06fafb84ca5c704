"""Metrics and readiness of the daemon, read over HTTP after each kind of outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync_service.metrics import Metrics
from sync_service.scheduler import Daemon
from sync_service.settings import AppSettings
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, ImportPolicy, MailtrapDouble, serve
from sync_service.web import WebServer, create_app
from tests.integration.daemon_support import free_port, wait_for
from tests.support.harness import T0, Source

pytestmark = pytest.mark.timeout(180)
PIPELINE = "customers"


def _settings(state_url: str, source_url: str, api_url: str, *, listen: str | None = None,
              token_rate: str = "150/10s", batch_size: int = 50) -> AppSettings:
    return AppSettings(
        state={"url": state_url},
        mailtrap={"api_url": api_url, "api_token": DEFAULT_TOKEN, "poll_interval": 0.05,
                  "poll_max_interval": 0.2, "max_retries": 3,
                  "pacing": {"token": token_rate}},
        web={"listen": listen or "127.0.0.1:0", "enabled": listen is not None},
        daemon={"every": "1h", "jitter": "0s", "grace_period": "5s"},
        pipelines=[{
            "name": PIPELINE, "lists": ["Customers"], "batch_size": batch_size,
            "source": {"connector": "sql", "url": source_url, "table": "customers",
                       "key": "id", "cursor": "updated_at", "lookback": 0},
            "mapping": {"email": "email", "fields": {"first_name": "first_name"}},
        }],
    )


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    crm = Source(f"sqlite:///{tmp_path}/crm.db")
    yield crm
    crm.close()


@pytest.fixture
def served(double: MailtrapDouble) -> Iterator[str]:
    double.add_field("first_name", "text")
    with serve(double) as base_url:
        yield base_url


class Scraper:
    """/metrics of a Metrics instance, fetched over HTTP from a real listener."""

    def __init__(self, metrics: Metrics) -> None:
        self.server = WebServer(create_app(metrics, lambda: True, {}), "127.0.0.1", 0)
        self.server.start()

    def value(self, name: str, **labels: str) -> float:
        host, port = self.server.address
        text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == name and labels.items() <= dict(s.labels).items())

    def close(self) -> None:
        self.server.stop(2.0)


def test_every_documented_metric_is_counted_after_each_kind_of_outcome(
        tmp_path: Path, double: MailtrapDouble, served: str, source: Source) -> None:
    """Success, invalid/duplicate/rejected contacts, a 422 import, a 429, a failed import, the
    contact quota, a busy lease and an interrupted run each show up in /metrics."""
    settings = _settings(f"sqlite:///{tmp_path}/state.db", source.url, served)
    pipeline = settings.pipelines[0]
    daemon = Daemon(settings, stop=threading.Event())
    scrape = Scraper(daemon.metrics)
    source.insert(range(1, 9))
    source.update([7], at=T0, email="not an address")           # invalid
    source.update([8], at=T0, email="user1@example.com")        # duplicate of key 1
    double.faults.reject_emails = {"user6@example.com"}         # Mailtrap refuses it (422)
    m = scrape.value
    try:
        with daemon.services() as (store, client):
            result = daemon.tick(pipeline, store, client)
            assert result is not None
            assert str(result.outcome) == "succeeded", result
            assert m("mailtrap_sync_runs_total", pipeline=PIPELINE, outcome="succeeded") == 1
            assert m("mailtrap_sync_run_duration_seconds_count", pipeline=PIPELINE) == 1
            assert m("mailtrap_sync_contact_results_total", result="sent") == 5
            assert m("mailtrap_sync_contact_results_total", result="invalid") == 1
            assert m("mailtrap_sync_contact_results_total", result="duplicate") == 1
            assert m("mailtrap_sync_contact_results_total", result="rejected") == 1
            assert m("mailtrap_sync_imports_total", status="rejected") == 1
            assert m("mailtrap_sync_imports_total", status="finished") == 1
            assert m("mailtrap_sync_rejected_contacts", pipeline=PIPELINE) == 3
            assert m("mailtrap_sync_contacts_tracked", pipeline=PIPELINE) == 5
            assert m("mailtrap_sync_last_success_timestamp_seconds", pipeline=PIPELINE) > 0
            assert m("mailtrap_sync_watermark_lag_seconds", pipeline=PIPELINE) > 0
            assert m("mailtrap_sync_api_requests_total", endpoint="imports") >= 3

            double.faults.reject_emails = set()
            double.force_429(1)
            source.update([2], at=T0.replace(hour=13), first_name="Changed")
            source.update([5], at=T0.replace(hour=13, minute=1), first_name="First5")  # same
            daemon.tick(pipeline, store, client)
            assert m("mailtrap_sync_api_rate_limited_total") == 1
            assert m("mailtrap_sync_api_requests_total", status="429") == 1
            assert m("mailtrap_sync_contact_results_total", result="unchanged") >= 1

            double.faults.import_failure_rate = 1.0
            source.update([3], at=T0.replace(hour=14), first_name="Again")
            daemon.tick(pipeline, store, client)
            assert m("mailtrap_sync_imports_total", status="failed") >= 1
            assert m("mailtrap_sync_runs_total", outcome="failed") == 1

            double.faults.import_failure_rate = 0.0
            double.max_contacts = len(double.contacts())
            source.insert([20], at=T0.replace(hour=15))
            daemon.tick(pipeline, store, client)
            assert m("mailtrap_sync_contacts_over_limit_total", pipeline=PIPELINE) == 1
            double.max_contacts = None

            alive = store.holder_lock(PIPELINE)  # what a live holder keeps (state/leases.py)
            assert alive.try_acquire()
            assert store.acquire_lease(PIPELINE, "elsewhere:1:x", 60)
            try:
                daemon.tick(pipeline, store, client)
            finally:
                alive.release()
            assert m("mailtrap_sync_runs_total", outcome="busy") == 1
            store.release_lease(PIPELINE, "elsewhere:1:x")

            _interrupt_a_run(daemon, double, source, store, client)
            assert m("mailtrap_sync_runs_total", outcome="interrupted") == 1
    finally:
        scrape.close()


def _interrupt_a_run(daemon: Daemon, double: MailtrapDouble, source: Source,
                     store: Any, client: Any) -> None:
    """A run whose import never finishes, stopped once it is posted."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=3600)
    posted = len(double.imports())
    source.update([4], at=T0.replace(hour=16), first_name="Stopped")

    def stop_when_posted() -> None:
        wait_for(lambda: len(double.imports()) > posted, timeout=30, what="the import")
        daemon.stop.set()

    stopper = threading.Thread(target=stop_when_posted, daemon=True)
    stopper.start()
    daemon.stop.clear()
    result = daemon.tick(daemon.settings.pipelines[0], store, client)
    stopper.join(5)
    assert result is not None
    assert str(result.outcome) == "interrupted", result


def test_readyz_stays_ready_during_a_sync_paced_to_its_limit(
        tmp_path: Path, double: MailtrapDouble, served: str, source: Source) -> None:
    """With the token's pacing so tight that every request waits seconds for a permit, /readyz
    answers 200 quickly throughout the sync (it never queues behind the pacing)."""
    port = free_port()
    # 2 requests per 7 s: a request queued behind the run's would wait past /readyz's 5 s.
    settings = _settings(f"sqlite:///{tmp_path}/state.db", source.url, served,
                         listen=f"127.0.0.1:{port}", token_rate="2/7s", batch_size=10)
    source.insert(range(1, 31))
    double.import_policy = ImportPolicy(polls_to_finish=1)
    stop = threading.Event()
    daemon = Daemon(settings, stop=stop)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    runner.start()
    answers: list[tuple[int, float]] = []
    try:
        wait_for(lambda: len(double.requests()) > 0, timeout=30, what="the sync to start")
        while len(double.contacts()) < 30 and len(answers) < 200:
            started = time.monotonic()
            status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code
            answers.append((status, time.monotonic() - started))
            time.sleep(0.3)
    finally:
        stop.set()
        runner.join(30)
    assert len(double.contacts()) == 30, "the sync did not finish"
    assert len(answers) >= 10, answers  # the sync was paced for several seconds
    assert [s for s, _ in answers if s != 200] == [], answers
    assert max(t for _, t in answers) < 2.0, answers
    assert codes == [0]
