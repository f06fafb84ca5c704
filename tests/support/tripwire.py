"""A ``Tripwire`` in front of the Mailtrap double, for the kill tests: it strikes at the nth
request of a kind, holding it before or after the double serves it (so the process is killed
with that request in flight), or telling the test once the answer went out.

Kinds: ``fields`` (GET contact fields), ``post`` (POST an import), ``poll`` (GET an import),
``finished_poll`` (a poll answered ``finished``), and ``unlist``: a POST of an import whose body
``match`` accepts (the test says which imports count, e.g. the removals of a key scan).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HOLD_LIMIT_S = 15.0  # a held request is let go after this, whatever happens


@dataclass
class _Trap:
    kind: str  # fields | post | poll | finished_poll | unlist
    nth: int
    mode: str  # before: held unserved; after: served, answer held; notify: answered, then hit
    match: Callable[[bytes], bool] | None = None  # unlist: which import bodies count
    seen: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class Tripwire:
    """ASGI middleware in front of the double: strikes at the nth request of a kind."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.trap: _Trap | None = None
        self.hit = threading.Event()
        self.release = threading.Event()

    def arm(self, kind: str, nth: int, mode: str,
            match: Callable[[bytes], bool] | None = None) -> _Trap:
        self.hit.clear()
        self.release.clear()
        self.trap = _Trap(kind, nth, mode, match)
        return self.trap

    def disarm(self) -> None:
        self.trap = None
        self.release.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trap = self.trap
        kind = _kind(scope)
        if trap is None or scope["type"] != "http" or kind is None or self.hit.is_set():
            await self.app(scope, receive, send)
            return
        if trap.kind in ("fields", "post", "poll") and kind == trap.kind:
            trap.seen += 1
            if trap.seen == trap.nth:
                await self._strike(trap, scope, receive, send)
                return
        if trap.kind == "finished_poll" and kind == "poll":
            await self._finished_poll(trap, scope, receive, send)
            return
        if trap.kind == "unlist" and kind == "post" and trap.match is not None:
            body, receive = await _buffered(receive)
            if trap.match(body):
                trap.seen += 1
                if trap.seen == trap.nth:
                    await self._strike(trap, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _strike(self, trap: _Trap, scope: Scope, receive: Receive, send: Send) -> None:
        trap.detail["path"] = scope["path"]
        if trap.mode == "before":
            self.hit.set()
            await self._held()
            return  # never served: the double does not see it
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self.app(scope, receive, keep)
        trap.detail["answer"] = b"".join(m.get("body", b"") for m in answer)
        if trap.mode == "notify":
            await _replay(answer, send)
            self.hit.set()
            return
        self.hit.set()
        await self._held()  # served, but the answer never leaves

    async def _finished_poll(self, trap: _Trap, scope: Scope, receive: Receive,
                             send: Send) -> None:
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self.app(scope, receive, keep)
        await _replay(answer, send)
        if b'"finished"' in b"".join(m.get("body", b"") for m in answer):
            trap.seen += 1
            if trap.seen == trap.nth:
                trap.detail["path"] = scope["path"]
                self.hit.set()

    async def _held(self) -> None:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The request's whole body, and a ``receive`` that hands it on once more."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body, given = b"".join(chunks), False

    async def again() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, again


async def _replay(messages: list[Message], send: Send) -> None:
    for message in messages:
        await send(message)


def _kind(scope: Scope) -> str | None:
    path, method = scope.get("path", ""), scope.get("method")
    if method == "GET" and path.endswith("/contacts/fields"):
        return "fields"
    if method == "POST" and path.endswith("/contacts/imports"):
        return "post"
    if method == "GET" and "/contacts/imports/" in path:
        return "poll"
    return None


__all__ = ["HOLD_LIMIT_S", "Tripwire"]
