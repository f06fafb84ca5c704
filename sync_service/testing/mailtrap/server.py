"""Serve a Mailtrap double over real HTTP: uvicorn in a background thread.

``serve(double)`` is a context manager yielding the base URL (with the port the OS picked when
``port=0``); leaving it stops the server and joins its thread. Used by ``mailtrap-sync demo``,
the benchmarks, and tests that need a real socket. The h11 protocol is forced because dropping a
connection on purpose relies on its request cycle (see ``app._drop``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from sync_service.testing.mailtrap.double import MailtrapDouble

_START_TIMEOUT = 10.0


@contextmanager
def serve(double: MailtrapDouble, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``double`` on ``host:port`` until the block ends; yields ``http://host:port``."""
    config = uvicorn.Config(
        double.app,
        host=host,
        port=port,
        http="h11",
        ws="none",
        lifespan="off",
        proxy_headers=False,
        access_log=False,
        log_config=None,  # keep the process's logging as it is configured
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mailtrap-double-server", daemon=True)
    thread.start()
    try:
        bound = _wait_until_started(server, thread)
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=_START_TIMEOUT)


def _wait_until_started(server: uvicorn.Server, thread: threading.Thread) -> int:
    deadline = time.monotonic() + _START_TIMEOUT
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the Mailtrap double's server failed to start (port in use?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the Mailtrap double's server did not start in time")
        time.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port
