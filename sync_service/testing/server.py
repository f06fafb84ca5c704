"""Serve any test double's ASGI app over real HTTP: uvicorn in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from starlette.types import ASGIApp

_START_TIMEOUT = 10.0


@contextmanager
def serve_app(app: ASGIApp, name: str = "double", host: str = "127.0.0.1",
              port: int = 0) -> Iterator[str]:
    """Run ``app`` on ``host:port`` (0: a free port) until the block ends; yields its base URL."""
    config = uvicorn.Config(app, host=host, port=port, http="h11", ws="none", lifespan="off",
                            proxy_headers=False, access_log=False, log_config=None,
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"{name}-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"the {name} server did not start")
            time.sleep(0.01)
        bound: int = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=_START_TIMEOUT)


class SharedTransport(httpx.BaseTransport):
    """A transport several clients share: closing one client leaves it open (``close_all``)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        """Kept open: the owner calls ``close_all``."""

    def close_all(self) -> None:
        self.inner.close()
