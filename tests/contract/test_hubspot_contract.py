"""The HubSpot connector passes the connector contract suite against the HubSpot double."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sync_service.connectors.hubspot import HubSpotConnector, HubSpotSettings
from sync_service.testing.contract import ConnectorContract, ContractSource, Row
from sync_service.testing.hubspot.double import DEFAULT_TOKEN, HubSpotDouble, millis
from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.server import SharedTransport


class HubSpotSource(ContractSource):
    """Contacts in the double: a new row is stamped a day ago plus its tick in seconds; a
    change to an existing row is stamped no earlier than the double's clock (now), so that it
    comes after any read made before it, as in HubSpot."""

    email_column = "email"
    name_column = "firstname"
    bad_credentials_hint = "token"

    def __init__(self) -> None:
        self.double = HubSpotDouble()
        self.transport = SharedTransport(InProcessTransport(self.double.app))
        self.base = millis(datetime.now(UTC) - timedelta(days=1))

    def put(self, rows: Sequence[Row]) -> None:
        for row in sorted(rows, key=lambda r: r.tick):
            ident = int(row.key)
            email = row.emails[0] if row.emails else None
            if ident in self.double.contacts():
                # A change: stamped by the double's clock, so after any read that came before.
                self.double.update(ident, at=max(self.base + row.tick * 1000, self.double.tick()),
                                   email=email, firstname=row.name)
            else:
                self.double.add(contact_id=ident, email=email, additional_emails=row.emails[1:],
                                at=self.base + row.tick * 1000, properties={"firstname": row.name})

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.double.archive(int(key))

    def connect(self, *, page_size: int, token: str = DEFAULT_TOKEN) -> HubSpotConnector:
        settings = HubSpotSettings(connector="hubspot", token=token, api_url="https://hubspot.test",
                                   properties=("email", "firstname"), page_size=page_size,
                                   lookback="0", search_rate="1000/1s", rate="1000/1s",
                                   retry_initial=0.01)
        return HubSpotConnector(settings, transport=self.transport)

    def connect_with_bad_credentials(self) -> HubSpotConnector:
        return self.connect(page_size=3, token="pat-na1-wrong")


class TestHubSpotConnectorContract(ConnectorContract):
    """The HubSpot connector against the contract suite."""

    @pytest.fixture
    def source(self) -> Iterator[ContractSource]:
        found = HubSpotSource()
        yield found
        found.transport.close_all()
