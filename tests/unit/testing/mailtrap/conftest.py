"""Helpers for the double's own tests: a fake clock and doubles built to order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sync_service.testing.mailtrap.double import FakeClock, MailtrapDouble
from sync_service.testing.mailtrap.transport import InProcessTransport
from tests.support.double_fixtures import BASE_URL, mailtrap_client, validating_transport

ClientFactory = Callable[..., httpx.Client]


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock for rate windows and timed imports."""
    return FakeClock()


@pytest.fixture
def client_for() -> Iterator[ClientFactory]:
    """Build clients to a given double: ``client_for(double, validate=True, token=...)``."""
    opened: list[httpx.Client] = []

    def build(double: MailtrapDouble, *, validate: bool = True, **kwargs: Any) -> httpx.Client:
        transport: httpx.BaseTransport = (
            validating_transport(double) if validate else InProcessTransport(double.app)
        )
        client = mailtrap_client(transport, **kwargs)
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.close()


@pytest.fixture
def raw_http(double: MailtrapDouble) -> Iterator[httpx.Client]:
    """A client on the double without spec validation (for bulk and deliberately bad calls)."""
    with httpx.Client(
        transport=InProcessTransport(double.app),
        base_url=BASE_URL,
        headers={"Authorization": "Bearer test-token"},
    ) as client:
        yield client
