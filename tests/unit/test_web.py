"""The HTTP listener, exercised through a real WebServer on an ephemeral port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync_service.errors import ConfigError
from sync_service.metrics import Metrics
from sync_service.web import ReadyChecks, WebServer, create_app, parse_listen

pytestmark = pytest.mark.timeout(60)


@contextmanager
def serving(
    *,
    metrics: Metrics | None = None,
    health: Callable[[], bool] = lambda: True,
    ready: ReadyChecks | None = None,
    ready_timeout_s: float = 5.0,
    host: str = "127.0.0.1",
) -> Iterator[httpx.Client]:
    app = create_app(metrics or Metrics(), health, ready if ready is not None else {},
                     ready_timeout_s=ready_timeout_s)
    server = WebServer(app, host, 0)
    server.start()
    bound_host, port = server.address
    netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
    try:
        with httpx.Client(base_url=f"http://{netloc}:{port}", timeout=30) as client:
            yield client
    finally:
        server.stop(5.0)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung checks wait on; set at teardown so their threads end."""
    event = threading.Event()
    yield event
    event.set()


def test_healthz_is_200_while_healthy() -> None:
    """/healthz answers 200 {"status": "ok"} when health() is true."""
    with serving(health=lambda: True) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("health", [lambda: False, lambda: 1 / 0 > 0])
def test_healthz_is_503_when_unhealthy_or_raising(health: Callable[[], bool]) -> None:
    """/healthz answers 503 when health() is false or raises."""
    with serving(health=health) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "fail"}


def test_readyz_is_200_when_every_check_passes() -> None:
    """/readyz answers 200 and lists each passing check."""
    with serving(ready={"state_store": lambda: None, "mailtrap": lambda: None}) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"state_store": {"status": "ok"}, "mailtrap": {"status": "ok"}},
    }


def test_readyz_is_503_naming_the_failing_check() -> None:
    """/readyz answers 503 and gives the failing check's error next to the passing ones."""
    ready = {"state_store": lambda: None, "mailtrap": lambda: "401 from /api/accounts"}
    with serving(ready=ready) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "state_store": {"status": "ok"},
        "mailtrap": {"status": "fail", "error": "401 from /api/accounts"},
    }


def test_readyz_reports_a_raising_check_by_exception_type_only(release: threading.Event) -> None:
    """A check that raises fails with its exception type; the message never reaches the body."""
    def broken() -> str | None:
        raise RuntimeError("password=hunter2 host=db.internal")

    with serving(ready={"state_store": broken}) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["state_store"]["error"] == "check raised RuntimeError"
    assert "hunter2" not in response.text


def test_readyz_times_out_a_hung_check_and_names_it(release: threading.Event) -> None:
    """A check hanging past the deadline fails as timed out; the other checks still report."""
    ready: Mapping[str, Callable[[], str | None]] = {
        "state_store": lambda: None,
        "mailtrap": lambda: None if release.wait() else "never",
    }
    with serving(ready=ready, ready_timeout_s=0.2) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "state_store": {"status": "ok"},
        "mailtrap": {"status": "fail", "error": "timed out after 0.2s"},
    }


def test_a_hung_check_is_not_started_again_by_later_probes(release: threading.Event) -> None:
    """Probes while a check still hangs wait on the same run instead of piling up threads."""
    calls = 0

    def hung() -> str | None:
        nonlocal calls
        calls += 1
        release.wait()
        return None

    with serving(ready={"state_store": hung}, ready_timeout_s=0.1) as client:
        statuses = [client.get("/readyz").status_code for _ in range(3)]
        calls_while_hung = calls
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        recovered = client.get("/readyz").status_code
    assert statuses == [503, 503, 503]
    assert recovered == 200
    assert calls_while_hung == 1


def test_metrics_serves_values_set_through_metrics() -> None:
    """/metrics serves text format 0.0.4 carrying what the Metrics methods recorded."""
    metrics = Metrics()
    metrics.run_finished("crm", "succeeded", 2.0, {"sent": 5})
    metrics.set_tracked("crm", 1234)
    with serving(metrics=metrics) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert found[("mailtrap_sync_runs_total",
                  (("outcome", "succeeded"), ("pipeline", "crm")))] == 1
    assert found[("mailtrap_sync_contact_results_total",
                  (("pipeline", "crm"), ("result", "sent")))] == 5
    assert found[("mailtrap_sync_contacts_tracked", (("pipeline", "crm"),))] == 1234


def test_address_reports_the_bound_port() -> None:
    """Asking for port 0 binds an ephemeral port, which address reports and which answers."""
    server = WebServer(create_app(Metrics(), lambda: True, {}), "127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="after start"):
        _ = server.address
    with server:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_start_on_a_taken_port_raises_config_error() -> None:
    """A port already in use fails in start() as a ConfigError naming the address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = WebServer(create_app(Metrics(), lambda: True, {}), "127.0.0.1", port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            server.start()


def test_serves_on_ipv6_loopback() -> None:
    """The listener binds an IPv6 address such as ::1."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with serving(host="::1") as client:
        assert client.get("/healthz").status_code == 200


def test_stop_returns_within_its_timeout_with_a_request_in_flight(
    release: threading.Event,
) -> None:
    """stop() returns within its timeout even while a slow /readyz request is still open."""
    entered = threading.Event()

    def slow() -> str | None:
        entered.set()
        release.wait()
        return None

    app = create_app(Metrics(), lambda: True, {"slow": slow}, ready_timeout_s=30)
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.address[1]}/readyz"
    in_flight = threading.Thread(target=_get_ignoring_errors, args=(url,), daemon=True)
    in_flight.start()
    assert entered.wait(10)

    started = time.monotonic()
    stopped = server.stop(timeout=2.0)
    assert time.monotonic() - started < 10  # generous bound around the 2 s timeout
    assert stopped
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def _get_ignoring_errors(url: str) -> None:
    with suppress(httpx.HTTPError):
        httpx.get(url, timeout=30)


def test_stop_is_safe_before_start_and_twice() -> None:
    """stop() on a server never started, or already stopped, returns True and does nothing."""
    server = WebServer(create_app(Metrics(), lambda: True, {}), "127.0.0.1", 0)
    assert server.stop(1.0)
    server.start()
    assert server.stop(1.0)
    assert server.stop(1.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)),
    ("0.0.0.0:9108", ("0.0.0.0", 9108)),
    (" localhost:0 ", ("localhost", 0)),
    ("[::1]:9108", ("::1", 9108)),
    ("[::]:65535", ("::", 65535)),
    ("metrics-host.internal:80", ("metrics-host.internal", 80)),
])
def test_parse_listen_accepts_host_and_port(text: str, expected: tuple[str, int]) -> None:
    """parse_listen splits host:port and bracketed IPv6 addresses."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("9108", "expected 'host:port'"),
    (":9108", "the host is missing"),
    ("::1:9108", "IPv6 addresses in brackets"),
    ("[::1]9108", r"expected '\[ipv6\]:port'"),
    ("[127.0.0.1]:9108", "not an IPv6 address"),
    ("127.0.0.1:", "port must be a number"),
    ("127.0.0.1:http", "port must be a number"),
    ("127.0.0.1:65536", "port must be a number"),
    ("127.0.0.1:-1", "port must be a number"),
    ("bad host:9108", "not a hostname"),
])
def test_parse_listen_rejects_malformed_addresses(text: str, message: str) -> None:
    """parse_listen raises ValueError saying what is wrong with the address."""
    with pytest.raises(ValueError, match=message):
        parse_listen(text)
