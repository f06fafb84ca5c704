"""A synchronous httpx transport that serves requests from an ASGI app in the same process.

``InProcessTransport(app)`` lets a plain ``httpx.Client`` talk to an ASGI application (the
Mailtrap double) without sockets::

    client = httpx.Client(transport=InProcessTransport(double.app), base_url="https://mailtrap.test")

Contract:

* The app runs on an asyncio event loop in one private daemon thread, started with the transport
  and stopped by ``close()`` (idempotent; also called when an ``httpx.Client`` using it closes).
  ``handle_request`` may be called from any number of threads at once; requests are served
  concurrently on that loop.
* Request bodies are read in full before the app sees them; responses are read in full (raw, so
  any content-encoding is decoded once, by the client) before they are returned: no streaming.
* An app exception propagates to the caller, except ``ConnectionDropped``, which an app raises to
  simulate a connection dropped without a response: it becomes ``httpx.RemoteProtocolError``
  (``kind="remote_protocol"``, the server closed the connection) or ``httpx.ReadError``
  (``kind="read"``, the connection was reset), exactly what httpx raises for a real socket.
* The request's read timeout (``request.extensions["timeout"]["read"]``) is honoured:
  ``httpx.ReadTimeout`` when the app takes longer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Literal

import httpx

DropKind = Literal["remote_protocol", "read"]


class ConnectionDropped(Exception):
    """Raised by an in-process app to drop the connection without answering."""

    def __init__(self, kind: DropKind = "remote_protocol") -> None:
        super().__init__(kind)
        self.kind: DropKind = kind


class InProcessTransport(httpx.BaseTransport):
    """Serve httpx requests from an ASGI app on a private event-loop thread."""

    def __init__(self, app: Any, *, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self._asgi = httpx.ASGITransport(app=app, client=client)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="in-process-asgi", daemon=True
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("InProcessTransport is closed")
        body = request.read()
        copy = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            content=body,
            extensions=request.extensions,
        )
        future = asyncio.run_coroutine_threadsafe(self._serve(copy), self._loop)
        try:
            status, headers, content = future.result(timeout=_read_timeout(request))
        except concurrent.futures.TimeoutError:
            future.cancel()
            message = "in-process app did not answer in time"
            raise httpx.ReadTimeout(message, request=request) from None
        except ConnectionDropped as drop:
            raise _drop_error(drop, request) from drop
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _serve(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._asgi.handle_async_request(request)
        content = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        return response.status_code, list(response.headers.raw), content

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        value = timeout.get("read")
        return float(value) if value is not None else None
    return None


def _drop_error(drop: ConnectionDropped, request: httpx.Request) -> httpx.TransportError:
    if drop.kind == "read":
        return httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
    return httpx.RemoteProtocolError(
        "Server disconnected without sending a response.", request=request
    )
