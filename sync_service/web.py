"""The daemon's HTTP listener: liveness, readiness and Prometheus metrics.

Contract:

- ``create_app`` builds a Starlette app with three GET routes (HEAD works too):
  ``/healthz``  200 ``{"status": "ok"}`` while ``health()`` is true, else 503
                ``{"status": "fail"}``. ``health`` runs on the event loop: cheap, never blocking.
  ``/readyz``   runs the readiness checks; 200 when every check passes, else 503. The body names
                each check: ``{"status": "ok"|"fail", "checks": {name: {"status", "error"}}}``.
  ``/metrics``  the ``Metrics`` exposition: text format 0.0.4, or OpenMetrics if asked for.
- Readiness checks may block on I/O. Each runs on a daemon thread under a deadline; one that
  misses it fails as ``"timed out after Ns"``. A check still running from an earlier probe is
  waited on, not started again, so a hung dependency pins one thread, not one per probe. A check
  that raises fails with the exception's type only: the body is served without authentication,
  and exception texts may carry hostnames or SQL. The full exception goes to the log.
- ``WebServer`` binds the socket in ``start()`` (so a bad or busy address fails there, as
  ``ConfigError``) and serves the app with uvicorn on a background daemon thread; ``stop(timeout)``
  returns within ``timeout`` seconds whatever the open connections are doing.
- ``parse_listen`` turns ``"host:port"`` / ``"[v6]:port"`` into ``(host, port)``, raising
  ``ValueError`` (which pydantic validators report as a validation error) with a corrected example.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, TypeVar

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from sync_service.errors import ConfigError
from sync_service.metrics import Metrics

log = structlog.get_logger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9108"
DEFAULT_READY_TIMEOUT_S = 5.0

Check = Callable[[], str | None]
# Named checks: a hang is pinned on the check that hung. Each returns None (ok) or an error.
ReadyChecks = Mapping[str, Check]

_T = TypeVar("_T")
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]+")


class _CheckRunner:
    """Runs blocking callables on daemon threads under a deadline, one run per name at a time."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Any]] = {}
        self._failing: set[str] = set()

    async def run(self, name: str, fn: Callable[[], _T]) -> _T:
        """``fn()``'s result; raises ``TimeoutError`` past the deadline, or what ``fn`` raised."""
        future = self._start(name, fn)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)

    def _start(self, name: str, fn: Callable[[], _T]) -> Future[_T]:
        with self._lock:
            future = self._inflight.get(name)
            if future is None:
                future = Future()
                # RUNNING: a probe that gives up cancels its asyncio wrapper, never this future.
                future.set_running_or_notify_cancel()
                self._inflight[name] = future
                threading.Thread(target=self._call, args=(name, fn, future),
                                 name=f"readyz-{name}", daemon=True).start()
            return future

    def _call(self, name: str, fn: Callable[[], _T], future: Future[_T]) -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the waiting probe, which reports it
            self._finish(name)
            future.set_exception(exc)
        else:
            self._finish(name)
            future.set_result(result)

    def _finish(self, name: str) -> None:
        with self._lock:
            self._inflight.pop(name, None)

    def note(self, name: str, error: str | None, exc: BaseException | None = None) -> None:
        """Log a check's transitions between passing and failing (not every probe)."""
        with self._lock:
            was_failing = name in self._failing
            if error is None:
                self._failing.discard(name)
            else:
                self._failing.add(name)
        if error is not None and not was_failing:
            log.warning("web.readiness_check_failed", check=name, error=error, exc_info=exc)
        elif error is None and was_failing:
            log.info("web.readiness_check_recovered", check=name)


# A failed check: the error shown in the body, and the exception (for the log) if it raised.
_Outcome = tuple[str | None, BaseException | None]


async def _run_check(runner: _CheckRunner, name: str, check: Check) -> _Outcome:
    try:
        result = await runner.run(name, check)
    except TimeoutError:
        return f"timed out after {runner.timeout_s:g}s", None
    except Exception as exc:
        return f"check raised {type(exc).__name__}", exc
    return (None if result is None else str(result)), None


async def _readiness(runner: _CheckRunner, ready: ReadyChecks) -> dict[str, _Outcome]:
    names = list(ready)
    outcomes = await asyncio.gather(*(_run_check(runner, n, ready[n]) for n in names))
    return dict(zip(names, outcomes, strict=True))


def create_app(
    metrics: Metrics,
    health: Callable[[], bool],
    ready: ReadyChecks,
    *,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
) -> Starlette:
    """The ASGI app serving ``/healthz``, ``/readyz`` and ``/metrics``."""
    runner = _CheckRunner(ready_timeout_s)

    async def healthz(request: Request) -> Response:
        try:
            alive = bool(health())
        except Exception as exc:
            log.error("web.health_check_raised", exc_info=exc)
            alive = False
        return JSONResponse({"status": "ok" if alive else "fail"}, 200 if alive else 503)

    async def readyz(request: Request) -> Response:
        outcomes = await _readiness(runner, ready)
        checks: dict[str, dict[str, str]] = {}
        for name, (error, exc) in outcomes.items():
            runner.note(name, error, exc)
            checks[name] = {"status": "ok"} if error is None else {"status": "fail", "error": error}
        ok = all(error is None for error, _ in outcomes.values())
        body = {"status": "ok" if ok else "fail", "checks": checks}
        return JSONResponse(body, 200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ])


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); OSError becomes ConfigError naming the address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        return socket.create_server(sockaddr, family=family, backlog=128)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"web listener cannot listen on {_format_address(host, port)}: {reason}"
        ) from exc


class WebServer:
    """Serves an ASGI app with uvicorn on a background daemon thread.

    ``name`` names the thread and the ``server`` key of its log lines; ``http`` picks uvicorn's
    HTTP protocol ("h11" for an app that must be able to hang up on a client, like the Mailtrap
    double in ``sync_service.testing``).
    """

    def __init__(
        self, app: ASGIApp, host: str, port: int, *, name: str = "web",
        http: Literal["auto", "h11"] = "auto",
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self.http = http
        self._address: tuple[str, int] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when 0 was asked for. Only after ``start()``."""
        if self._address is None:
            raise RuntimeError("WebServer.address is known only after start()")
        return self._address

    def start(self, startup_timeout_s: float = 10.0) -> None:
        """Bind and serve; returns once uvicorn accepts connections. Raises ConfigError on bind."""
        if self._thread is not None:
            raise RuntimeError("WebServer.start() called twice")
        sock = _bind(self.host, self.port)
        host, port = sock.getsockname()[:2]
        self._address = (host, port)
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False,
            lifespan="off", loop="asyncio", server_header=False, http=self.http, ws="none",
        )
        server = self._server = uvicorn.Server(config)
        thread = self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name=self.name, daemon=True)
        thread.start()
        self._wait_started(server, thread, startup_timeout_s)
        log.info("web.started", server=self.name, host=host, port=port)

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # uvicorn signals startup failure with SystemExit
            self._error = exc
            log.error("web.crashed", server=self.name, exc_info=exc)
        finally:
            sock.close()

    def _wait_started(
        self, server: uvicorn.Server, thread: threading.Thread, timeout_s: float,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"web listener failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop(1.0)
                raise RuntimeError(f"web listener did not start within {timeout_s:g}s")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop serving; True when the thread ended within ``timeout`` seconds.

        Open connections get half the time to finish; then uvicorn is told to exit at once. The
        thread is a daemon, so one that still lingers never holds the process up.
        """
        if self._server is None or self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        self._server.should_exit = True
        self._thread.join(timeout / 2)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("web.stop_timed_out", server=self.name, timeout_s=timeout)
            return False
        log.info("web.stopped", server=self.name)
        return True

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[ipv6]:port"`` to ``(host, port)``; ValueError says what to write."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {value!r}: expected '[ipv6]:port', e.g. '[::1]:9108'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"listen address {value!r}: {host!r} inside brackets is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        _check_plain_host(value, host, sep)
    return host, _parse_port(value, port_text)


def _check_plain_host(value: str, host: str, sep: str) -> None:
    if not sep:
        raise ValueError(f"listen address {value!r}: expected 'host:port', e.g. '{DEFAULT_LISTEN}'")
    if ":" in host:
        raise ValueError(f"listen address {value!r}: put IPv6 addresses in brackets, e.g. "
                         "'[::1]:9108'")
    if not host:
        raise ValueError(f"listen address {value!r}: the host is missing; write "
                         "'0.0.0.0:9108' for all interfaces or '127.0.0.1:9108' for this host")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"listen address {value!r}: {host!r} is not a hostname or IP address")


def _parse_port(value: str, port_text: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"listen address {value!r}: the port must be a number from 0 to 65535")
    return int(port_text)
