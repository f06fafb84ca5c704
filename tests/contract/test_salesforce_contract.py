"""The Salesforce connector passes the connector contract suite against the Salesforce double."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sync_service.connectors.salesforce import SalesforceConnector, SalesforceSettings
from sync_service.testing.contract import ConnectorContract, ContractSource, Row
from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.salesforce import SalesforceDouble

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


class SalesforceSource(ContractSource):
    """Contacts in the double; ticks are seconds after T0; a deletion goes to the recycle bin."""

    email_column = "Email"
    name_column = "LastName"
    several_emails = False  # a Contact has one Email field
    bad_credentials_hint = "refused the client-credentials credentials"

    def __init__(self) -> None:
        self.double = SalesforceDouble()

    def put(self, rows: Sequence[Row]) -> None:
        for row in rows:
            values = {"Email": row.emails[0] if row.emails else None, "LastName": row.name,
                      "modstamp": T0 + timedelta(seconds=row.tick)}
            try:
                self.double.update(row.key, **values)
            except KeyError:
                self.double.add("Contact", record_id=row.key, **values)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.double.delete(key)

    def connect(self, *, page_size: int) -> SalesforceConnector:
        self.double.batch_size = page_size
        return self._connector("test-client-secret")

    def connect_with_bad_credentials(self) -> SalesforceConnector:
        return self._connector("not-the-secret")

    def _connector(self, secret: str) -> SalesforceConnector:
        settings = SalesforceSettings(
            connector="salesforce", login_url="https://acme.my.salesforce.com",
            client_id="test-client-id", client_secret=secret, fields=("Email", "LastName"))
        return SalesforceConnector(
            settings, transport=InProcessTransport(self.double.app), retry_initial=0.01)


class TestSalesforceConnectorContract(ConnectorContract):
    """The built-in Salesforce connector against the contract suite."""

    @pytest.fixture
    def source(self) -> ContractSource:
        return SalesforceSource()
