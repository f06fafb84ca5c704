"""Fixtures around the Mailtrap test double (a pytest plugin, registered in tests/conftest.py).

* ``double`` — a fresh ``MailtrapDouble`` (account 1001 "Demo", token "test-token", seed 0).
* ``mailtrap_transport`` — ``ValidatingTransport(InProcessTransport(double.app))``: every request
  and response is checked against Mailtrap's official specs.
* ``mailtrap_http`` — an ``httpx.Client`` on that transport, ``base_url=BASE_URL``, sending the
  Bearer token.
* ``mailtrap_server`` — the same double over real HTTP (uvicorn thread); yields the base URL.

For a double built differently (fake clock, other limits), ``validating_transport(double)`` and
``mailtrap_client(transport)`` build the same stack by hand; close what they return.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sync_service.testing.mailtrap.double import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TOKEN,
    MailtrapDouble,
    serve,
)
from sync_service.testing.mailtrap.transport import InProcessTransport
from tests.support.openapi import ValidatingTransport

BASE_URL = "https://mailtrap.test"
CONTACTS = f"/api/accounts/{DEFAULT_ACCOUNT_ID}/contacts"  # the default account's contacts API


def validating_transport(double: MailtrapDouble) -> ValidatingTransport:
    """Spec-validating, in-process transport to ``double``."""
    return ValidatingTransport(InProcessTransport(double.app))


def mailtrap_client(
    transport: httpx.BaseTransport, token: str = DEFAULT_TOKEN, base_url: str = BASE_URL
) -> httpx.Client:
    """An httpx client on ``transport`` sending ``token`` as a Bearer token."""
    return httpx.Client(
        transport=transport, base_url=base_url, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
def double() -> MailtrapDouble:
    """A fresh Mailtrap double with its default account and token."""
    return MailtrapDouble()


@pytest.fixture
def mailtrap_transport(double: MailtrapDouble) -> Iterator[ValidatingTransport]:
    """The double, in-process, behind spec validation of every request and response."""
    transport = validating_transport(double)
    yield transport
    transport.close()


@pytest.fixture
def mailtrap_http(mailtrap_transport: ValidatingTransport) -> Iterator[httpx.Client]:
    """An httpx client talking to the double through the validating transport."""
    with mailtrap_client(mailtrap_transport) as client:
        yield client


@pytest.fixture
def mailtrap_server(double: MailtrapDouble) -> Iterator[str]:
    """The double served over real HTTP on a free local port; yields its base URL."""
    with serve(double) as url:
        yield url
