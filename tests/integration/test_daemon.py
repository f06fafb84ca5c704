"""`mailtrap-sync run` as a real subprocess against the Mailtrap double served over HTTP."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_service.models import RunOutcome
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import ImportPolicy, MailtrapDouble, serve
from sync_service.wiring import EXIT_BUSY, EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from tests.integration.daemon_support import (
    PIPELINE,
    ROWS,
    DaemonProcess,
    Source,
    cli,
    cli_env,
    email,
    free_port,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
GRACE_S = 20.0
NON_ROOT = 10001  # the Dockerfile's USER


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[Source]:
    source = Source(tmp_path / "crm.db")
    yield source
    source.close()


@pytest.fixture
def fields(double: MailtrapDouble) -> MailtrapDouble:
    """The double with the custom field the pipeline maps."""
    double.add_field("first_name", "text")
    return double


def _has(double: MailtrapDouble, address: str, first_name: str) -> bool:
    contact = double.contacts().get(address)
    return contact is not None and contact.fields.get("first_name") == first_name


def _quiet_request_count(daemon: DaemonProcess, double: MailtrapDouble) -> tuple[float, int]:
    """api_requests_total and the double's request count, read while no request went out."""

    def settled() -> tuple[float, int] | None:
        before = len(double.requests())
        time.sleep(0.2)
        counted = daemon.metric("mailtrap_sync_api_requests_total")
        return (counted, before) if len(double.requests()) == before else None

    return wait_for(settled, timeout=30, what="a moment without API requests",
                    alive=daemon.check_alive, interval=0.05)


def test_daemon_syncs_changes_serves_health_and_metrics_and_stops_on_sigterm(
    tmp_path: Path, fields: MailtrapDouble, crm: Source,
) -> None:
    """run syncs a change made while it runs; /healthz, /readyz, /metrics agree with the double;
    one JSON run.finished per run; SIGTERM exits 0."""
    double, port, started = fields, free_port(), time.time()
    state_url = f"sqlite:///{tmp_path}/state.db"
    config = write_config(tmp_path / "cfg.toml", state_url=state_url, source_url=crm.url,
                          every="2s", listen=f"127.0.0.1:{port}", grace=f"{GRACE_S:g}s")
    with serve(double) as base_url:
        daemon = DaemonProcess.start(config, cli_env(base_url), tmp_path / "daemon.log", port=port)
        try:
            wait_for(lambda: len(double.contacts()) == ROWS, timeout=30, what="the first sync",
                     alive=daemon.check_alive)
            changed = crm.change(3, "Grace")
            wait_for(lambda: _has(double, changed, "Grace"), timeout=30, what="the change",
                     alive=daemon.check_alive)
            # The run that carried the change has finished once one more succeeded run is counted.
            succeeded = daemon.metric("mailtrap_sync_runs_total", outcome="succeeded")
            wait_for(lambda: daemon.metric("mailtrap_sync_runs_total", outcome="succeeded")
                     > succeeded, timeout=30, what="the next run", alive=daemon.check_alive)
            assert daemon.get("/healthz").json() == {"status": "ok"}
            ready = daemon.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert set(ready.json()["checks"]) == {"state_store", "mailtrap"}
            _assert_metrics(daemon, double, started)
            code = daemon.terminate(GRACE_S + 10)
        finally:
            daemon.kill()
    assert code == EXIT_OK, daemon.tail()
    _assert_one_finished_event_per_run(daemon, state_url)


def _assert_metrics(daemon: DaemonProcess, double: MailtrapDouble, started: float) -> None:
    imports = double.imports()
    assert daemon.metric("mailtrap_sync_runs_total", pipeline=PIPELINE, outcome="succeeded") >= 2
    assert daemon.metric("mailtrap_sync_runs_total", outcome="failed") == 0
    assert daemon.metric("mailtrap_sync_contact_results_total", result="sent") == sum(
        len(i.emails) for i in imports) == ROWS + 1
    assert daemon.metric("mailtrap_sync_imports_total", status="finished") == len(imports) == 2
    assert daemon.metric("mailtrap_sync_last_success_timestamp_seconds", pipeline=PIPELINE) \
        >= started
    assert daemon.metric("mailtrap_sync_contacts_tracked", pipeline=PIPELINE) == ROWS
    lag = [s for s in daemon.samples() if s[0] == "mailtrap_sync_watermark_lag_seconds"]
    assert [labels for _, labels, _ in lag] == [{"pipeline": PIPELINE}]
    counted, sent = _quiet_request_count(daemon, double)
    assert counted == sent > 0
    throttled = sum(1 for r in double.requests() if r.status == 429)
    assert daemon.metric("mailtrap_sync_api_rate_limited_total") == throttled


def _assert_one_finished_event_per_run(daemon: DaemonProcess, state_url: str) -> None:
    events = daemon.events()  # also fails on any line that is not JSON
    finished = {e["run_id"]: e for e in events if e["event"] == "run.finished"}
    assert len(finished) == sum(1 for e in events if e["event"] == "run.finished")
    store = StateStore.from_url(state_url)
    try:
        runs = store.list_runs(PIPELINE, limit=1000)
    finally:
        store.close()
    assert sorted(finished) == sorted(r.id for r in runs)
    for run in runs:
        event = finished[run.id]
        assert event["outcome"] == str(run.outcome)
        assert event["pipeline"] == PIPELINE
        assert isinstance(event["duration_s"], float)
        assert {k: event[k] for k in run.counts} == dict(run.counts)
    assert sum(1 for r in runs if r.outcome is RunOutcome.SUCCEEDED) >= 2


@pytest.mark.postgres
def test_two_daemons_on_postgres_never_overlap_and_send_each_change_once(
    tmp_path: Path, pg_url: str, fields: MailtrapDouble, crm: Source,
) -> None:
    """Two daemons on one PostgreSQL store, same pipeline every 1 s for ~20 s: recorded runs
    never overlap and each change reaches Mailtrap in exactly one import."""
    double, began = fields, time.monotonic()
    config = write_config(tmp_path / "cfg.toml", state_url=pg_url, source_url=crm.url,
                          every="1s", poll_interval=1.0)
    with serve(double) as base_url:
        env = cli_env(base_url)
        daemons = [DaemonProcess.start(config, env, tmp_path / f"daemon{i}.log") for i in (1, 2)]

        def alive() -> None:
            for daemon in daemons:
                daemon.check_alive()

        try:
            wait_for(lambda: len(double.contacts()) == ROWS, timeout=30, what="the first sync",
                     alive=alive)
            changed = []
            for row in range(1, ROWS):  # one change at a time, each in a run of its own
                changed.append(crm.change(row, f"Change{row}"))
                wait_for(lambda a=changed[-1], r=row: _has(double, a, f"Change{r}"), timeout=30,
                         what=f"change {row}", alive=alive)
            time.sleep(max(0.0, began + 20.0 - time.monotonic()))  # contend for the rest
            alive()
            codes = [daemon.terminate(GRACE_S + 10) for daemon in daemons]
        finally:
            for daemon in daemons:
                daemon.kill()
    assert codes == [EXIT_OK, EXIT_OK]
    _assert_runs_never_overlap(pg_url)
    seen = Counter(address for i in double.imports() for address in i.emails)
    assert seen == Counter([email(row) for row in range(1, ROWS + 1)] + changed)
    assert all(i.status == "finished" for i in double.imports())
    busy = [e for d in daemons for e in d.events() if e["event"] == "run.busy"]
    assert busy, "the two daemons never contended for the pipeline"


def _assert_runs_never_overlap(state_url: str) -> None:
    store = StateStore.from_url(state_url)
    try:
        runs = sorted(store.list_runs(PIPELINE, limit=10_000), key=lambda r: r.started_at)
    finally:
        store.close()
    assert len(runs) >= 5
    assert all(r.finished_at is not None for r in runs)
    for before, after in itertools.pairwise(runs):
        assert before.finished_at is not None
        assert before.finished_at <= after.started_at, (before, after)


def test_sync_exits_busy_while_the_daemon_holds_the_pipeline(
    tmp_path: Path, fields: MailtrapDouble, crm: Source,
) -> None:
    """While the daemon's run holds the lease, `sync` exits 3 naming the holder, and a second
    daemon on the same SQLite store exits 2 saying SQLite serves one process."""
    double = fields
    double.import_policy = ImportPolicy(polls_to_finish=1_000_000)  # the run keeps polling
    config = write_config(tmp_path / "cfg.toml", state_url=f"sqlite:///{tmp_path}/state.db",
                          source_url=crm.url, every="1h", listen=f"127.0.0.1:{free_port()}")
    with serve(double) as base_url:
        env = cli_env(base_url)
        daemon = DaemonProcess.start(config, env, tmp_path / "daemon.log")
        try:
            wait_for(double.imports, timeout=30, what="the daemon's import",
                     alive=daemon.check_alive)
            busy = cli(config, env, "sync")
            assert busy.returncode == EXIT_BUSY, busy.stderr
            assert re.search(rf"pipeline {PIPELINE} is busy: its lease is held by \S+:"
                             rf"{daemon.proc.pid}:", busy.stderr), busy.stderr
            second = cli(config, env, "run", timeout=60)
            assert second.returncode == EXIT_CONFIG, second.stderr
            assert "SQLite serves one process" in second.stderr
            daemon.check_alive()
            code = daemon.terminate(GRACE_S + 10)  # the run stops polling; the import is kept
        finally:
            daemon.kill()
    assert code == EXIT_OK, daemon.tail()


def test_sync_exits_busy_when_another_owner_holds_the_lease(
    tmp_path: Path, mailtrap_server: str, crm: Source,
) -> None:
    """A lease held in the state store by another owner makes `sync` exit 3 without sending."""
    state_url = f"sqlite:///{tmp_path}/state.db"
    config = write_config(tmp_path / "cfg.toml", state_url=state_url, source_url=crm.url)
    store = StateStore.from_url(state_url)
    alive = store.holder_lock(PIPELINE)  # what a live holder keeps (see state/leases.py)
    try:
        store.ensure_schema()
        assert alive.try_acquire()
        assert store.acquire_lease(PIPELINE, "elsewhere:1:cafe", 60.0)
        result = cli(config, cli_env(mailtrap_server), "sync")
    finally:
        alive.release()
        store.close()
    assert result.returncode == EXIT_BUSY, result.stderr
    assert "lease is held by elsewhere:1:cafe" in result.stderr


def test_sigterm_during_a_step_longer_than_the_grace_exits_1_when_the_grace_ends(
    tmp_path: Path, crm: Source,
) -> None:
    """A step that outlasts `grace_period` (Mailtrap never answers; the HTTP timeout is 30 s)
    does not hold the process up: SIGTERM exits 1 once the 1 s grace is over."""
    config = write_config(tmp_path / "cfg.toml", state_url=f"sqlite:///{tmp_path}/state.db",
                          source_url=crm.url, every="1h", grace="1s")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        env = cli_env(f"http://127.0.0.1:{silent.getsockname()[1]}")
        daemon = DaemonProcess.start(config, env, tmp_path / "daemon.log")
        try:
            wait_for(lambda: "run.started" in daemon.log_path.read_text(), timeout=30,
                     what="the run", alive=daemon.check_alive)
            code = daemon.terminate(15)
        finally:
            daemon.kill()
    assert code == EXIT_FAILED, daemon.tail()
    assert "daemon.grace_expired" in [e["event"] for e in daemon.events()]


def _dockerfile() -> dict[str, str]:
    """The Dockerfile's last ENTRYPOINT, CMD, USER and HEALTHCHECK (continuations joined)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word in {"ENTRYPOINT", "CMD", "USER", "HEALTHCHECK"}:
            found[word] = rest.strip()
    return found


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    """A folder owned by the image's uid, outside root's private temporary folders."""
    if os.geteuid() != 0:
        pytest.skip("switching to the image's uid needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    folder = Path(tempfile.mkdtemp(prefix="mts-nonroot-"))
    os.chown(folder, NON_ROOT, NON_ROOT)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_image_entrypoint_runs_as_non_root_and_passes_its_healthcheck(
    unprivileged_dir: Path, fields: MailtrapDouble,
) -> None:
    """The Dockerfile's ENTRYPOINT + CMD, run as its USER (uid 10001), serve /healthz, and its
    HEALTHCHECK command passes against them; SIGTERM exits 0."""
    image = _dockerfile()
    entrypoint, command = json.loads(image["ENTRYPOINT"]), json.loads(image["CMD"])
    assert image["USER"] == f"{NON_ROOT}:{NON_ROOT}"
    assert command == ["run"]
    healthcheck = json.loads(image["HEALTHCHECK"][image["HEALTHCHECK"].index("CMD") + 3:])
    folder, port = unprivileged_dir, free_port()
    crm = Source(folder / "crm.db")
    crm.close()
    os.chown(folder / "crm.db", NON_ROOT, NON_ROOT)
    # The image's environment overrides the file: the state store and listener come from it.
    config = write_config(folder / "mailtrap-sync.toml", state_url="sqlite:///unused.db",
                          source_url=crm.url, every="1h", listen="127.0.0.1:1")
    as_user = ["setpriv", f"--reuid={NON_ROOT}", f"--regid={NON_ROOT}", "--clear-groups", "--"]
    with serve(fields) as base_url:
        env = cli_env(base_url, HOME=str(folder), MAILTRAP_SYNC_CONFIG=str(config),
                      MAILTRAP_SYNC_STATE_URL=f"sqlite:///{folder}/state.db",
                      MAILTRAP_SYNC_WEB_LISTEN=f"127.0.0.1:{port}",
                      PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        version = subprocess.run([*as_user, *entrypoint, "--version"], env=env, cwd=folder,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert version.returncode == 0, version.stderr
        assert version.stdout.startswith("mailtrap-sync")
        daemon = DaemonProcess([*as_user, *entrypoint, *command], env, folder / "daemon.log",
                               port=port, cwd=folder)
        try:
            wait_for(lambda: daemon.answers("/healthz"), timeout=30, what="/healthz",
                     alive=daemon.check_alive)
            probe = subprocess.run([*as_user, *healthcheck], env=env, cwd=folder, timeout=30,
                                   check=False)
            assert probe.returncode == 0
            uid_line = next(line for line in Path(f"/proc/{daemon.proc.pid}/status")
                            .read_text().splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(NON_ROOT)] * 4
            wait_for(lambda: len(fields.contacts()) == ROWS, timeout=30, what="the first sync",
                     alive=daemon.check_alive)
            code = daemon.terminate(GRACE_S + 10)
        finally:
            daemon.kill()
    assert code == EXIT_OK, daemon.tail()
    assert (folder / "state.db").stat().st_uid == NON_ROOT
