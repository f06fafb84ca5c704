"""Serve a Mailtrap double over real HTTP, with the daemon's own server helper.

``serve(double)`` is a context manager yielding the base URL (with the port the OS picked when
``port=0``); leaving it stops the server and joins its thread. Used by ``mailtrap-sync demo``,
the benchmarks, and tests that need a real socket. It runs ``sync_service.web.WebServer`` (uvicorn
on a daemon thread) with the h11 protocol forced, because dropping a connection on purpose relies
on its request cycle (see ``app._drop``). A busy or bad address raises ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from starlette.types import ASGIApp

from sync_service.web import WebServer

_STOP_TIMEOUT = 4.0


class Servable(Protocol):
    """Anything with an ASGI ``app`` (the double)."""

    @property
    def app(self) -> ASGIApp: ...


@contextmanager
def serve(double: Servable, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``double`` on ``host:port`` until the block ends; yields ``http://host:port``."""
    server = WebServer(double.app, host, port, name="mailtrap-double", http="h11")
    server.start()
    try:
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{server.address[1]}"
    finally:
        server.stop(_STOP_TIMEOUT)
