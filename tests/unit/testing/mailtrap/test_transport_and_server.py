"""The two ways to reach the double: the in-process transport and a real local server."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from sync_service.errors import ConfigError
from sync_service.testing.mailtrap.double import DropError, MailtrapDouble, serve
from sync_service.testing.mailtrap.transport import ConnectionDropped, InProcessTransport
from tests.support.double_fixtures import BASE_URL, CONTACTS, mailtrap_client


def test_transport_serves_many_threads_at_once(double: MailtrapDouble) -> None:
    """One InProcessTransport answers concurrent requests from several threads."""
    with mailtrap_client(InProcessTransport(double.app)) as http, ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda i: http.post(f"{CONTACTS}/lists", json={"name": f"l{i}"}).status_code,
                range(40),
            )
        )
    assert statuses == [200] * 40
    assert len(double.lists()) == 40


def test_closed_transport_refuses_requests(double: MailtrapDouble) -> None:
    """After close() (idempotent) the transport raises instead of hanging."""
    transport = InProcessTransport(double.app)
    transport.close()
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport.handle_request(httpx.Request("GET", f"{BASE_URL}/api/accounts"))


async def _slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    await asyncio.sleep(5)


async def _dropping_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise ConnectionDropped("read")


def test_transport_honours_read_timeout_and_drops() -> None:
    """A slow app gives httpx.ReadTimeout; ConnectionDropped('read') gives httpx.ReadError."""
    slow = httpx.Client(transport=InProcessTransport(_slow_app), base_url=BASE_URL, timeout=0.05)
    dropping = httpx.Client(transport=InProcessTransport(_dropping_app), base_url=BASE_URL)
    with slow, pytest.raises(httpx.ReadTimeout):
        slow.get("/")
    with dropping, pytest.raises(httpx.ReadError):
        dropping.get("/")


def test_real_server_serves_the_same_double(double: MailtrapDouble, mailtrap_server: str) -> None:
    """Over real HTTP an import runs its course and lands in the same double."""
    with mailtrap_client(httpx.HTTPTransport(), base_url=mailtrap_server) as http:
        import_id = http.post(
            f"{CONTACTS}/imports", json={"contacts": [{"email": "a@example.com"}]}
        ).json()["id"]
        http.get(f"{CONTACTS}/imports/{import_id}")
        assert http.get(f"{CONTACTS}/imports/{import_id}").json()["status"] == "finished"
    assert set(double.contacts()) == {"a@example.com"}


@pytest.mark.parametrize(
    ("error", "raised"),
    [("remote_protocol", httpx.RemoteProtocolError), ("read", httpx.ReadError)],
)
def test_real_server_drops_the_connection(
    double: MailtrapDouble, mailtrap_server: str, error: DropError, raised: type[Exception]
) -> None:
    """A drop fault on the real server closes or resets the socket with no response."""
    double.faults.drop_error = error
    double.force("drop_before")
    with mailtrap_client(httpx.HTTPTransport(), base_url=mailtrap_server) as http:
        with pytest.raises(raised):
            http.get(f"{CONTACTS}/lists")
        assert http.get(f"{CONTACTS}/lists").status_code == 200


def test_serving_on_a_busy_port_names_the_address(double: MailtrapDouble,
                                                  mailtrap_server: str) -> None:
    """serve() on a port already in use fails at once with a ConfigError naming the address."""
    port = int(mailtrap_server.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"), \
            serve(MailtrapDouble(), port=port):
        pass  # pragma: no cover - serve() must refuse before the block runs
    with mailtrap_client(httpx.HTTPTransport(), base_url=mailtrap_server) as http:
        assert http.get(f"{CONTACTS}/lists").status_code == 200  # the first server is unharmed
