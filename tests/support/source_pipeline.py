"""A pipeline from any connector into the Mailtrap double, for connector end-to-end tests.

``SourcePipeline`` runs the real ``SyncJob`` with the given ``[pipelines.source]`` table against
a real SQLite state store and the Mailtrap double behind spec validation of every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sync_service.job import RunResult, SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunKind
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from tests.support.double_fixtures import BASE_URL, validating_transport


@dataclass
class SourcePipeline:
    double: MailtrapDouble
    source: dict[str, Any]
    state_url: str
    email: str = "email"
    fields: dict[str, str] = field(default_factory=dict)  # merge tag -> source column
    field_types: dict[str, str] = field(default_factory=dict)  # merge tag -> Mailtrap type
    batch_size: int = 50_000
    lists: list[str | int] = field(default_factory=lambda: ["Customers"])
    store: StateStore = field(init=False)

    def __post_init__(self) -> None:
        for tag in self.fields:
            if tag not in self.double.fields():
                self.double.add_field(tag, self.field_types.get(tag, "text"))
        self.store = StateStore.from_url(self.state_url)
        self.store.ensure_schema()
        self.transport = validating_transport(self.double)

    def close(self) -> None:
        self.store.close()
        self.transport.close()

    def settings(self) -> AppSettings:
        return AppSettings(
            state={"url": self.state_url},
            mailtrap={"api_url": BASE_URL, "poll_interval": 0.01, "poll_max_interval": 0.05,
                      "max_retries": 6},
            pipelines=[{"name": "crm", "lists": self.lists, "batch_size": self.batch_size,
                        "source": self.source,
                        "mapping": {"email": self.email, "fields": self.fields}}],
        )

    def job(self) -> SyncJob:
        settings = self.settings()
        client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, transport=self.transport,
                                retry_initial=0.01, retry_max=0.1, max_retries=6)
        return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=self.store,
                       client=client)

    def run(self, kind: RunKind = RunKind.SYNC) -> RunResult:
        return self.job().run(kind)

    def mailtrap_view(self) -> dict[str, dict[str, Any]]:
        """email → fields of the contacts on a list (what the pipeline keeps in step)."""
        return {email: dict(c.fields) for email, c in self.double.contacts().items()
                if c.list_ids}

    def sent(self) -> int:
        """How many contact entries all imports so far carried."""
        return sum(len(i.contacts) for i in self.double.imports())
