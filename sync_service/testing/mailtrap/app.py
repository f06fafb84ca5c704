"""The Mailtrap double's HTTP face: a Starlette app behind a small fault-injecting gateway.

Request flow, outermost first:

1. ``_Gateway`` (raw ASGI) reads the body and parses it once (the parsed body goes to the log
   and, through the scope, to the operation; neither changes it), settles due imports, draws the
   fault for this request (forced outcomes first, then the seeded rates), answers injected
   429/500s itself or drops the connection (before or after the request is carried out), and
   logs every request.
2. The Starlette router matches the account-scoped Mailtrap paths; unknown paths answer 404
   ``{"error": "Not Found"}``, wrong methods 405.
3. ``_Api._run`` authenticates (401), checks the account is visible to the token (403; viewer
   tokens may only read), applies the rate limits (429), and runs the operation under the
   double's lock. Operations raise ``ApiError`` for Mailtrap's refusals.

A dropped connection, on a real uvicorn server, closes (``remote_protocol``) or resets
(``read``) the client's socket; in-process it raises ``ConnectionDropped`` for
``InProcessTransport`` to translate.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync_service.testing.mailtrap import contacts
from sync_service.testing.mailtrap import state as audience
from sync_service.testing.mailtrap.limits import DropError, Fault, Faults
from sync_service.testing.mailtrap.model import (
    Account,
    ApiError,
    AudienceState,
    Json,
    LoggedRequest,
)
from sync_service.testing.mailtrap.state import DoubleState
from sync_service.testing.mailtrap.transport import ConnectionDropped

RATE_LIMITED: Json = {"errors": "Rate limit exceeded"}
UNEXPECTED: Json = {"errors": "Unexpected error"}
UNAUTHENTICATED: Json = {"error": "Incorrect API token"}
FORBIDDEN: Json = {"errors": "Account access forbidden"}
_ACCOUNT_PATH = re.compile(r"^/api/accounts/(\d+)(?:/|$)")
_ACCOUNT = "/api/accounts/{account_id:int}/contacts"
_READ_METHODS = frozenset({"GET", "HEAD"})
_PAYLOAD = "mailtrap_double.payload"  # scope key: the body as the gateway parsed it
_ONE = ["GET", "PATCH", "DELETE"]


class Backend(Protocol):
    """What the app needs from the double (``MailtrapDouble`` is one); all under ``lock``."""

    @property
    def lock(self) -> AbstractContextManager[Any]: ...

    @property
    def state(self) -> DoubleState: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def audience(self) -> AudienceState:
        """Custom events and contact exports (the consent work's endpoints)."""

    @property
    def faults(self) -> Faults:
        """The fault knobs (``quota_422`` and ``uncounted`` are read by the import routes)."""

    def admit_rate(self, token: str, account_id: int | None) -> None:
        """Count one request against the rate windows; ApiError 429 when over a limit."""

    def next_fault(self) -> tuple[Fault | None, DropError]:
        """The outcome forced or drawn for the request now arriving, and how a drop looks."""

    def rejected_emails(self) -> frozenset[str]:
        """Lower-cased emails that imports and contact calls must refuse."""

    def import_fails(self) -> bool:
        """Whether an import finishing now fails (drawn from the seeded failure rate)."""

    def record(self, entry: LoggedRequest) -> None:
        """Append one request to the log."""


def token_of(headers: Any) -> str | None:
    """The API token from ``Authorization: Bearer`` or ``Api-Token``, if any."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
    api_token = headers.get("api-token")
    return str(api_token) if api_token else None


def build_app(double: Backend) -> ASGIApp:
    """The ASGI app serving ``double``."""
    api = _Api(double)
    routes = [
        Route("/api/accounts", api.accounts, methods=["GET"]),
        Route(f"{_ACCOUNT}/lists", api.lists, methods=["GET", "POST"]),
        Route(f"{_ACCOUNT}/lists/{{list_id:int}}", api.one_list, methods=_ONE),
        Route(f"{_ACCOUNT}/fields", api.fields, methods=["GET", "POST"]),
        Route(f"{_ACCOUNT}/fields/{{field_id:int}}", api.one_field, methods=_ONE),
        Route(f"{_ACCOUNT}/imports", api.imports, methods=["POST"]),
        Route(f"{_ACCOUNT}/imports/{{import_id:int}}", api.one_import, methods=["GET"]),
        *_audience_routes(api),  # consent branch: events, exports, export files
        Route(_ACCOUNT, api.contacts, methods=["POST"]),
        Route(f"{_ACCOUNT}/{{identifier:path}}", api.one_contact, methods=_ONE),
    ]
    inner = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return _Gateway(double, inner)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class _Call:
    """What one operation gets: token, account (a blank one for /api/accounts), path, body."""

    token: str
    account: Account
    params: dict[str, Any]
    payload: Json


Operation = Callable[[_Call], tuple[int, Json]]


class _Api:
    """The endpoints; each maps to operations on the double's state."""

    def __init__(self, double: Backend) -> None:
        self.d = double
        self.s = double.state

    async def _run(self, request: Request, operation: Operation) -> Response:
        if _PAYLOAD in request.scope:
            payload = request.scope[_PAYLOAD]
        else:
            payload = _parse(await request.body())
        with self.d.lock:
            try:
                call = self._admit(request, payload)
                status, content = operation(call)
            except ApiError as refusal:
                status, content = refusal.status, refusal.body
        if status == 204:
            return Response(status_code=204)
        return JSONResponse(content, status_code=status)

    def _admit(self, request: Request, payload: Json) -> _Call:
        token = token_of(request.headers)
        if token is None or token not in self.s.tokens:
            raise ApiError(401, UNAUTHENTICATED)
        params = dict(request.path_params)
        account_id = params.pop("account_id", None)
        if account_id is None:
            self.d.admit_rate(token, None)
            return _Call(token, Account(id=0, name=""), params, payload)
        level = self.s.tokens[token].get(account_id)
        if level is None or (level < 100 and request.method not in _READ_METHODS):
            raise ApiError(403, FORBIDDEN)
        self.d.admit_rate(token, account_id)
        return _Call(token, self.s.account(account_id), params, payload)

    async def accounts(self, request: Request) -> Response:
        return await self._run(request, lambda c: (200, self.s.accounts_json(c.token)))

    async def lists(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._run(
                request, lambda c: (200, [x.to_json() for x in c.account.lists.values()])
            )
        return await self._run(
            request,
            lambda c: (200, self.s.create_list(c.account, _get(c.payload, "name")).to_json()),
        )

    async def one_list(self, request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            list_id = c.params["list_id"]
            if request.method == "GET":
                return 200, self.s.get_list(c.account, list_id).to_json()
            if request.method == "PATCH":
                renamed = self.s.update_list(c.account, list_id, _get(c.payload, "name"))
                return 200, renamed.to_json()
            self.s.delete_list(c.account, list_id)
            return 204, None

        return await self._run(request, operation)

    async def fields(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._run(
                request, lambda c: (200, [x.to_json() for x in c.account.fields.values()])
            )
        return await self._run(
            request, lambda c: (201, self.s.create_field(c.account, c.payload).to_json())
        )

    async def one_field(self, request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            field_id = c.params["field_id"]
            if request.method == "GET":
                return 200, self.s.get_field(c.account, field_id).to_json()
            if request.method == "PATCH":
                return 200, self.s.update_field(c.account, field_id, c.payload).to_json()
            self.s.delete_field(c.account, field_id)
            return 204, None

        return await self._run(request, operation)

    async def imports(self, request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            if self.d.faults.quota_422:
                contacts_sent = c.payload["contacts"]
                raise ApiError(422, {"errors": [
                    {"email": item["email"], "errors": {"base": ["contacts limit reached"]}}
                    for item in contacts_sent]})
            job = contacts.create_import(
                self.s, c.account, c.payload, self.d.rejected_emails(), self.d.clock()
            )
            return 201, job.to_json()

        return await self._run(request, operation)

    async def one_import(self, request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            job = contacts.poll_import(
                self.s, c.account, c.params["import_id"], self.d.clock(), self.d.import_fails
            )
            body = job.to_json()
            if job.status == "finished" and self.d.faults.uncounted:
                body["updated_contacts_count"] = max(
                    0, job.updated_count - self.d.faults.uncounted)
            return 200, body

        return await self._run(request, operation)

    async def contacts(self, request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            created = contacts.create_contact(
                self.s, c.account, c.payload, self.d.rejected_emails()
            )
            return 201, {"data": created.to_json()}

        return await self._run(request, operation)

    async def one_contact(self, request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            identifier = c.params["identifier"]
            if request.method == "GET":
                return 200, {"data": contacts.get_contact(c.account, identifier).to_json()}
            if request.method == "PATCH":
                action, found = contacts.update_contact(
                    self.s, c.account, identifier, c.payload, self.d.rejected_emails()
                )
                return 200, {"action": action, "data": found.to_json()}
            contacts.delete_contact(c.account, identifier)
            return 204, None

        return await self._run(request, operation)


# --- consent branch: custom events, contact exports and their files (double_state) ----------

def _audience_routes(api: _Api) -> list[Route]:
    async def events(request: Request) -> Response:
        def operation(c: _Call) -> tuple[int, Json]:
            return 201, audience.create_event(api.d.audience, c.account, c.params["identifier"],
                                              c.payload, api.d.clock())

        return await api._run(request, operation)

    async def exports(request: Request) -> Response:
        base = str(request.base_url)

        def operation(c: _Call) -> tuple[int, Json]:
            job = audience.create_export(api.d.audience, c.account, c.payload, api.d.clock(),
                                         api.s.next_id())
            return 201, job.to_json(base)

        return await api._run(request, operation)

    async def one_export(request: Request) -> Response:
        base = str(request.base_url)

        def operation(c: _Call) -> tuple[int, Json]:
            job = audience.poll_export(api.d.audience, c.account, c.params["export_id"],
                                       api.d.clock())
            return 200, job.to_json(base)

        return await api._run(request, operation)

    async def export_file(request: Request) -> Response:
        with api.d.lock:
            content = audience.export_content(api.d.audience, request.path_params["token"])
        if content is None:
            return Response("Not Found", status_code=404)
        return Response(content, media_type="application/gzip")

    return [
        Route(f"{_ACCOUNT}/exports", exports, methods=["POST"]),
        Route(f"{_ACCOUNT}/exports/{{export_id:int}}", one_export, methods=["GET"]),
        Route(f"{_ACCOUNT}/{{identifier:path}}/events", events, methods=["POST"]),
        Route("/downloads/exports/{token}.csv.gz", export_file, methods=["GET"]),
    ]


def _parse(body: bytes) -> Json:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _get(payload: Json, key: str) -> Json:
    return payload.get(key) if isinstance(payload, dict) else None


@dataclass
class _Exchange:
    """What the gateway learns about one request, for the log."""

    method: str
    path: str
    token: str | None
    account_id: int | None
    body: Json
    status: int | None = None
    fault: Fault | None = None


class _Gateway:
    """Fault injection and the request log, around the Starlette app."""

    def __init__(self, double: Backend, inner: ASGIApp) -> None:
        self._double = double
        self._inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        body = await _read_body(receive)
        started = self._double.clock()
        fault, drop_error = self._double.next_fault()
        exchange = _exchange(scope, body, fault)
        try:
            await self._dispatch(scope, body, receive, send, exchange=exchange, drop=drop_error)
        finally:
            self._double.record(
                LoggedRequest(
                    time=started,
                    method=exchange.method,
                    path=exchange.path,
                    status=exchange.status,
                    token=exchange.token,
                    account_id=exchange.account_id,
                    body=exchange.body,
                    fault=exchange.fault,
                )
            )

    async def _dispatch(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        *,
        exchange: _Exchange,
        drop: DropError,
    ) -> None:
        fault = exchange.fault
        if fault in ("429", "500"):
            exchange.status = 429 if fault == "429" else 500
            content = RATE_LIMITED if fault == "429" else UNEXPECTED
            await JSONResponse(content, status_code=exchange.status)(scope, receive, send)
            return
        if fault != "drop_before":
            target = _discard if fault == "drop_after" else send
            scope = {**scope, _PAYLOAD: exchange.body}
            await self._inner(scope, _replay(body, receive), _capture(target, exchange))
        if fault in ("drop_before", "drop_after"):
            exchange.status = None
            await _drop(send, drop)


def _exchange(scope: Scope, body: bytes, fault: Fault | None) -> _Exchange:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    path: str = scope["path"]
    matched = _ACCOUNT_PATH.match(path)
    return _Exchange(
        method=scope["method"],
        path=path,
        token=token_of(headers),
        account_id=int(matched.group(1)) if matched else None,
        body=_parse(body),
        fault=fault,
    )


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _capture(send: Send, exchange: _Exchange) -> Send:
    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        await send(message)

    return capture


async def _discard(message: Message) -> None:
    return None


async def _drop(send: Send, kind: DropError) -> None:
    """Close (or reset) the client's connection without an answer.

    Under uvicorn ``send`` is a method of the request-response cycle, which holds the asyncio
    transport: closing it is the only way an ASGI app can hang up. Anywhere else (in-process)
    the drop is signalled with ``ConnectionDropped``.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if not isinstance(transport, asyncio.Transport):
        raise ConnectionDropped(kind)
    if kind == "read":
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: the close sends RST, the client reads ECONNRESET
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    cycle.disconnected = True  # type: ignore[union-attr]  # tells uvicorn not to answer 500
