"""The Pipedrive connector passes the connector contract suite against the Pipedrive double."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sync_service.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sync_service.testing.contract import ConnectorContract, ContractSource, Row
from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.pipedrive import DEFAULT_TOKEN, PipedriveDouble

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


class PipedriveSource(ContractSource):
    """Persons in the double; ticks are seconds after T0; the first address is the primary one."""

    name_column = "Nickname"  # a custom field, read by its name
    bad_credentials_hint = "refused the API token"

    def __init__(self) -> None:
        self.double = PipedriveDouble()
        self.nickname = self.double.add_custom_field("Nickname")

    def put(self, rows: Sequence[Row]) -> None:
        for row in rows:
            at = T0 + timedelta(seconds=row.tick)
            custom = {self.nickname: row.name}
            try:
                self.double.update(int(row.key), at=at, emails=list(row.emails), custom=custom)
            except KeyError:
                self.double.add(person_id=int(row.key), first_name=row.name, at=at,
                                emails=list(row.emails), custom=custom)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.double.delete(int(key))

    def connect(self, *, page_size: int) -> PipedriveConnector:
        return self._connector(DEFAULT_TOKEN, page_size)

    def connect_with_bad_credentials(self) -> PipedriveConnector:
        return self._connector("not-the-token", 3)

    def _connector(self, token: str, page_size: int) -> PipedriveConnector:
        settings = PipedriveSettings(connector="pipedrive", token=token, page_size=page_size,
                                     fields=("first_name", "Nickname"), rate="1000/1s")
        return PipedriveConnector(
            settings, transport=InProcessTransport(self.double.app), retry_initial=0.01)


class TestPipedriveConnectorContract(ConnectorContract):
    """The built-in Pipedrive connector against the contract suite."""

    @pytest.fixture
    def source(self) -> ContractSource:
        return PipedriveSource()
