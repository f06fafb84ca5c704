"""The daemon's pieces: crontab triggers, triggers per pipeline, failure backoff, the SQLite claim,
the scheduler's job options, and the shutdown grace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from apscheduler.triggers.interval import IntervalTrigger
from structlog.testing import capture_logs

from sync_service.crontab import crontab_trigger, crontab_weekdays
from sync_service.errors import ConfigError
from sync_service.models import RunOutcome
from sync_service.scheduler import DAEMON_LEASE, Backoff, Daemon, trigger_for
from sync_service.settings import AppSettings, load_settings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from sync_service.wiring import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from tests.integration.daemon_support import PIPELINE, Source, cli, cli_env, wait_for, write_config
from tests.support.double_fixtures import BASE_URL, validating_transport

pytestmark = pytest.mark.timeout(60)
SUNDAY = datetime(2026, 3, 1, tzinfo=UTC)


def _fire_times(expression: str, count: int) -> list[datetime]:
    trigger = crontab_trigger(expression)
    times: list[datetime] = []
    previous, now = None, SUNDAY
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        times.append(fire)
        previous, now = fire, fire + timedelta(microseconds=1)
    return times


def test_crontab_weekdays_mean_what_they_mean_to_cron() -> None:
    """`0 9 * * 1-5` fires at 09:00 UTC Monday to Friday (APScheduler alone would say Tue-Sat)."""
    fired = _fire_times("0 9 * * 1-5", 10)
    assert [f.strftime("%a %H:%M") for f in fired[:5]] == [
        "Mon 09:00", "Tue 09:00", "Wed 09:00", "Thu 09:00", "Fri 09:00"]
    assert {f.strftime("%a") for f in fired} == {"Mon", "Tue", "Wed", "Thu", "Fri"}


@pytest.mark.parametrize(("field", "days"), [
    ("*", [0, 1, 2, 3, 4, 5, 6]), ("0-6", [0, 1, 2, 3, 4, 5, 6]), ("7", [0]), ("0,7", [0]),
    ("5-7", [0, 5, 6]), ("*/2", [0, 2, 4, 6]), ("1-5/2", [1, 3, 5]), ("SUN,sat", [0, 6]),
    ("mon-wed", [1, 2, 3]), ("3/2", [0, 3, 5]),  # a/n runs up to 7 (Sunday), as in cronie
])
def test_crontab_day_of_week_fields(field: str, days: list[int]) -> None:
    """Day-of-week fields count from Sunday = 0, accept 7 for Sunday, names, ranges and steps."""
    assert crontab_weekdays(field) == days


def test_crontab_either_day_field_matches_when_both_are_restricted() -> None:
    """`0 9 13 * 5` fires on every Friday and on every 13th, as cron does."""
    fired = _fire_times("0 9 13 * 5", 8)
    assert all(f.day == 13 or f.strftime("%a") == "Fri" for f in fired)
    assert any(f.day == 13 and f.strftime("%a") != "Fri" for f in fired)  # Mon 13 April
    assert len({f.date() for f in fired}) == len(fired)  # Friday the 13th fires once


def test_crontab_macros() -> None:
    """@daily and @weekly are midnight UTC every day and every Sunday."""
    assert [f.isoformat() for f in _fire_times("@daily", 2)] == [
        "2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00"]
    assert {f.strftime("%a %H:%M") for f in _fire_times("@weekly", 3)} == {"Sun 00:00"}


@pytest.mark.parametrize("expression", [
    "0 9 * *", "0 9 * * 8", "0 9 * * 5-1", "0 9 * * funday", "61 * * * *", "0 9 * * 1/0"])
def test_bad_crontab_lines_are_refused(expression: str) -> None:
    """Wrong field counts, days outside 0-7, backward ranges, bad values raise ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        crontab_trigger(expression)


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, every: str = "1h",
              source_url: str | None = None, daemon: str = "", grace: str = "20s",
              schedule: str | None = None) -> AppSettings:
    monkeypatch.setenv("MAILTRAP_API_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("MAILTRAP_API_URL", BASE_URL)
    for name in ("MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_WEB_LISTEN", "MAILTRAP_ACCOUNT_ID"):
        monkeypatch.delenv(name, raising=False)
    config = write_config(tmp_path / "cfg.toml", state_url=f"sqlite:///{tmp_path}/state.db",
                          source_url=source_url or f"sqlite:///{tmp_path}/crm.db", every=every,
                          daemon=daemon, grace=grace)
    if schedule is not None:
        text = config.read_text().replace(f'every = "{every}"', f'schedule = "{schedule}"')
        config.write_text(text)
    return load_settings(config)


def test_bad_schedule_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline's unreadable `schedule` is a configuration error naming pipeline and key."""
    with pytest.raises(ConfigError, match=r"pipelines\[0\] \(customers\): schedule"):
        _settings(tmp_path, monkeypatch, schedule="0 9 * * 9")


def test_triggers_per_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`every` gives an interval trigger, `schedule` a cron one; jitter "0s" turns jitter off."""
    settings = _settings(tmp_path, monkeypatch, every="2s")
    trigger = trigger_for(settings.pipelines[0], settings)
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.interval == timedelta(seconds=2)
    assert trigger.jitter is None
    cron = _settings(tmp_path, monkeypatch, schedule="*/15 * * * *")
    fire = trigger_for(cron.pipelines[0], cron).get_next_fire_time(None, SUNDAY)
    assert fire == SUNDAY


def test_default_jitter_is_a_tenth_of_the_interval_at_most_30s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without `[daemon] jitter`, an interval gets 10 % of itself as jitter, capped at 30 s."""
    settings = _settings(tmp_path, monkeypatch, every="2m")
    unset = settings.model_copy(update={"daemon": settings.daemon.model_copy(
        update={"jitter": None})})
    pipeline = settings.pipelines[0]
    assert trigger_for(pipeline, unset).jitter == pytest.approx(12.0)
    hourly = pipeline.model_copy(update={"every": 3600.0})  # 1h; model_copy skips parsing
    assert trigger_for(hourly, unset).jitter == pytest.approx(30.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_pauses_after_threshold_doubles_caps_and_resets() -> None:
    """Failures below the threshold do not pause; from it the pause doubles up to the maximum;
    a success resets."""
    clock = _Clock()
    backoff = Backoff(3, 60.0, 200.0, clock=clock, spread=lambda: 1.0)
    assert [backoff.failed() for _ in range(2)] == [0.0, 0.0]
    assert backoff.remaining() == 0
    assert [backoff.failed() for _ in range(4)] == [60.0, 120.0, 200.0, 200.0]
    assert backoff.remaining() == 200.0
    clock.now += 150
    assert backoff.remaining() == 50.0
    backoff.succeeded()
    assert backoff.remaining() == 0
    assert backoff.failed() == 0.0


@pytest.fixture
def double() -> MailtrapDouble:
    double = MailtrapDouble()
    double.add_field("first_name", "text")
    return double


@pytest.fixture
def transport(double: MailtrapDouble) -> Iterator[httpx.BaseTransport]:
    transport = validating_transport(double)
    yield transport
    transport.close()


def test_a_pipeline_failing_n_times_in_a_row_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: httpx.BaseTransport,
) -> None:
    """After `failure_threshold` failed runs the pipeline's ticks are skipped until the pause
    ends; the pause doubles with the next failure; a success clears it."""
    settings = _settings(tmp_path, monkeypatch, daemon='failure_threshold = 2\n'
                         'failure_backoff = "1m"\nfailure_backoff_max = "10m"')
    clock, pipeline = _Clock(), settings.pipelines[0]
    daemon = Daemon(settings, stop=threading.Event(), transport=transport, clock=clock)
    with daemon.services() as (store, client), capture_logs() as logs:
        results = [daemon.tick(pipeline, store, client) for _ in range(3)]  # no crm table yet
        assert [r.outcome if r else None for r in results] == [
            RunOutcome.FAILED, RunOutcome.FAILED, None]
        assert len(store.list_runs(PIPELINE)) == 2
        assert 54 <= daemon.backoff[PIPELINE].remaining() <= 66
        clock.now += 70
        third = daemon.tick(pipeline, store, client)
        assert third is not None
        assert third.outcome is RunOutcome.FAILED
        assert 108 <= daemon.backoff[PIPELINE].remaining() <= 132
        clock.now += 140
        Source(tmp_path / "crm.db").close()  # the source is fixed
        fixed = daemon.tick(pipeline, store, client)
        assert fixed is not None
        assert fixed.outcome is RunOutcome.SUCCEEDED
        assert daemon.backoff[PIPELINE].remaining() == 0
        assert daemon.backoff[PIPELINE].failures == 0
    events = [e["event"] for e in logs]
    assert events.count("pipeline.backing_off") == 2
    assert events.count("run.skipped_backoff") == 1
    assert 'outcome="failed",pipeline="customers"} 3.0' in daemon.metrics.render().decode()


def test_scheduler_jobs_never_overlap_coalesce_and_have_a_misfire_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: httpx.BaseTransport,
) -> None:
    """Each pipeline's job: one instance at a time, missed runs coalesced, the misfire grace
    from `[daemon] misfire_grace`, first run at start; the SQLite claim renews on its own
    executor."""
    settings = _settings(tmp_path, monkeypatch, daemon='misfire_grace = "2m"')
    daemon = Daemon(settings, stop=threading.Event(), transport=transport)
    with daemon.services() as (store, client):
        scheduler = daemon.build_scheduler(store, client)
    job = scheduler.get_job(PIPELINE)
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 120)
    assert job.next_run_time <= datetime.now(UTC)
    assert scheduler.get_job(DAEMON_LEASE).executor == "housekeeping"


def test_a_second_daemon_on_one_sqlite_store_refuses(tmp_path: Path) -> None:
    """While another daemon keeps its claim on a SQLite store renewed, `run` exits 2 saying that
    SQLite serves one process."""
    state_url = f"sqlite:///{tmp_path}/state.db"
    config = write_config(tmp_path / "cfg.toml", state_url=state_url,
                          source_url=f"sqlite:///{tmp_path}/crm.db")
    store = StateStore.from_url(state_url)
    store.ensure_schema()
    done = threading.Event()

    def keep_renewing() -> None:
        while not done.wait(0.2):
            store.renew_lease(DAEMON_LEASE, "other-host:4242:feed", 30.0)

    assert store.acquire_lease(DAEMON_LEASE, "other-host:4242:feed", 30.0)
    renewer = threading.Thread(target=keep_renewing, daemon=True)
    renewer.start()
    try:
        result = cli(config, cli_env("http://127.0.0.1:9"), "run", timeout=45)
    finally:
        done.set()
        renewer.join(5)
        store.close()
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "SQLite serves one process" in result.stderr
    assert "other-host:4242:feed" in result.stderr


def test_a_lapsed_sqlite_claim_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: httpx.BaseTransport,
) -> None:
    """A claim nobody renews (its daemon died) is taken over; stopping releases it (exit 0)."""
    settings = _settings(tmp_path, monkeypatch)
    store = StateStore.from_url(settings.state.url)
    store.ensure_schema()
    assert store.acquire_lease(DAEMON_LEASE, "crashed-host:1:dead", 0.5)
    daemon = Daemon(settings, stop=threading.Event(), transport=transport)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    try:
        with capture_logs() as logs:
            thread.start()
            wait_for(lambda: (store.lease_holder(DAEMON_LEASE) or ("",))[0] == daemon.owner,
                     timeout=20, what="the take-over")
            daemon.stop.set()
            thread.join(20)
        assert codes == [EXIT_OK]
        assert store.lease_holder(DAEMON_LEASE) is None
        assert "daemon.sqlite_taken_over" in [e["event"] for e in logs]
    finally:
        daemon.stop.set()
        store.close()


class _Stalling(httpx.BaseTransport):
    """Holds every import POST until released: a step that cannot look at the stop flag."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/contacts/imports"):
            self.entered.set()
            self.release.wait(30)
        return self.inner.handle_request(request)


def test_shutdown_returns_1_when_a_step_outlasts_the_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: httpx.BaseTransport,
) -> None:
    """A stop during a step longer than `grace_period` returns 1 at the end of the grace, while
    the step is still held up (the CLI then ends the process: `exit_hard`)."""
    crm = Source(tmp_path / "crm.db")
    crm.close()
    settings = _settings(tmp_path, monkeypatch, grace="1s")
    stalling = _Stalling(transport)
    daemon = Daemon(settings, stop=threading.Event(), transport=stalling)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    try:
        with capture_logs() as logs:
            thread.start()
            assert stalling.entered.wait(20)
            daemon.stop.set()
            thread.join(10)
        assert codes == [EXIT_FAILED]
        assert "daemon.grace_expired" in [e["event"] for e in logs]
    finally:
        daemon.stop.set()
        stalling.release.set()
    store = StateStore.from_url(settings.state.url)
    try:
        wait_for(lambda: (run := store.last_run(PIPELINE)) is not None
                 and run.finished_at is not None, timeout=20, what="the abandoned run's end")
    finally:
        store.close()
