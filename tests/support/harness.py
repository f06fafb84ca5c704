"""A sync pipeline wired to real things for end-to-end tests.

``Source`` is a real `customers` table (SQLite, PostgreSQL or MariaDB). ``Harness`` runs the real
``SyncJob`` against a real state store and the Mailtrap test double, with every request the client
sends (and every answer) validated against Mailtrap's official OpenAPI files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from sync_service.job import RunResult, SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunKind
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from tests.support.openapi import ValidatingTransport

BASE_URL = "https://mailtrap.test"
T0 = datetime(2026, 3, 1, 12, 0, 0)  # naive UTC, as the source column holds it
FIELDS = {"first_name": "text", "last_name": "text", "seats": "integer"}

_metadata = sa.MetaData()
customers = sa.Table(
    "customers", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(300)),
    sa.Column("last_name", sa.String(80)),
    sa.Column("seats", sa.Integer),
    sa.Column("updated_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
              index=True),
)


class Source:
    """The CRM table the pipeline reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        _metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def insert(self, ids: Iterable[int], *, at: datetime = T0, **values: Any) -> None:
        rows = [{"id": i, "email": f"user{i}@example.com", "first_name": f"First{i}",
                 "last_name": f"Last{i}", "seats": i % 50, "updated_at": at, **values}
                for i in ids]
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 5_000):
                conn.execute(customers.insert(), rows[start:start + 5_000])

    def update(self, ids: Iterable[int], *, at: datetime, **values: Any) -> None:
        with self.engine.begin() as conn:
            for offset, row_id in enumerate(ids):
                conn.execute(customers.update().where(customers.c.id == row_id).values(
                    updated_at=at + timedelta(microseconds=offset), **values))

    def expected(self) -> dict[str, dict[str, Any]]:
        """email → fields, as Mailtrap should hold them."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(customers)).mappings().all()
        return {r["email"].strip().lower(): {
            "first_name": r["first_name"] or "", "last_name": r["last_name"] or "",
            **({"seats": r["seats"]} if r["seats"] is not None else {})} for r in rows}


@dataclass
class Harness:
    double: MailtrapDouble
    transport: ValidatingTransport
    source: Source
    state_url: str
    batch_size: int = 50_000
    lookback: str | int = 0
    fetch_size: int = 5_000
    lists: list[str | int] = field(default_factory=lambda: ["Customers"])
    store: StateStore = field(init=False)

    def __post_init__(self) -> None:
        for tag, data_type in FIELDS.items():
            if tag not in self.double.fields():
                self.double.add_field(tag, data_type)
        self.store = StateStore.from_url(self.state_url)
        self.store.ensure_schema()

    def close(self) -> None:
        self.store.close()
        self.source.close()

    def settings(self) -> AppSettings:
        return AppSettings(
            state={"url": self.state_url},
            mailtrap={"api_url": BASE_URL, "poll_interval": 0.01, "poll_max_interval": 0.05,
                      "max_retries": 6},
            pipelines=[{
                "name": "customers", "lists": self.lists, "batch_size": self.batch_size,
                "source": {"connector": "sql", "url": self.source.url, "table": "customers",
                           "key": "id", "cursor": "updated_at", "lookback": self.lookback,
                           "fetch_size": self.fetch_size},
                "mapping": {"email": "email", "fields": {t: t for t in FIELDS}},
            }],
        )

    def client(self) -> MailtrapClient:
        return MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, transport=self.transport,
                              retry_initial=0.01, retry_max=0.1, max_retries=6)

    def job(self, **kwargs: Any) -> SyncJob:
        settings = self.settings()
        return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=self.store,
                       client=self.client(), **kwargs)

    def run(self, kind: RunKind = RunKind.SYNC, **kwargs: Any) -> RunResult:
        return self.job().run(kind, **kwargs)

    def mailtrap_view(self) -> dict[str, dict[str, Any]]:
        """email → fields, as the double holds them."""
        return {email: dict(c.fields) for email, c in self.double.contacts().items()}

    def imported_emails(self) -> list[list[str]]:
        """The emails each import carried, in posting order."""
        return [list(i.emails) for i in self.double.imports()]
