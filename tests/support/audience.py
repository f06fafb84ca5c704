"""Test kit for the audience features (opt-outs, custom events, reconcile), on top of ``Harness``.

``Audience`` wraps a ``Harness``: it adds an ``opted_out`` column to the CRM's ``customers``
table and a ``crm_events`` table beside it, builds the pipeline's settings with ``[consent]`` and
``[events]``, and runs the real ``SyncJob`` (and ``reconcile``) against the Mailtrap double with
every API request validated against Mailtrap's spec. Export files are downloaded through the
double's own transport (they are not API calls, so there is no spec to check them against).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sync_service.job import RunResult, SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunKind
from sync_service.settings import AppSettings
from sync_service.settings_audience import ConsentSettings, EventsSettings
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, FakeClock
from sync_service.testing.mailtrap.transport import InProcessTransport
from tests.support.harness import BASE_URL, T0, Harness

EVENTS_DDL = ("CREATE TABLE crm_events (id INTEGER PRIMARY KEY, email VARCHAR(255), "
              "event VARCHAR(255), plan VARCHAR(50), seats INTEGER)")


@dataclass
class Audience:
    harness: Harness
    consent: dict[str, Any] | None = None
    events: dict[str, Any] | None = None
    pacing: str = "200/60s"
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        with self.harness.source.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE customers ADD COLUMN opted_out INTEGER"))
            conn.execute(sa.text(EVENTS_DDL))

    # the CRM ------------------------------------------------------------------------------------
    def opt(self, ids: Iterable[int], value: int | None, *, at: datetime) -> None:
        """Set ``opted_out`` on these rows and move their cursor (as a CRM edit would)."""
        with self.harness.source.engine.begin() as conn:
            statement = sa.text(
                "UPDATE customers SET opted_out = :v, updated_at = :at WHERE id = :id"
            ).bindparams(sa.bindparam("at", type_=sa.DateTime()))
            for offset, row_id in enumerate(ids):
                conn.execute(statement,
                             {"v": value, "at": at + timedelta(microseconds=offset), "id": row_id})

    def add_events(self, rows: Iterable[tuple[int, int, str]]) -> None:
        """(event id, customer id, event name) rows in ``crm_events``."""
        values = [{"id": e, "email": f"user{c}@example.com", "event": name, "plan": "pro",
                   "seats": e % 7} for e, c, name in rows]
        with self.harness.source.engine.begin() as conn:
            for start in range(0, len(values), 5_000):
                conn.execute(sa.text("INSERT INTO crm_events VALUES (:id, :email, :event, :plan, "
                                     ":seats)"), values[start:start + 5_000])

    # the pipeline -------------------------------------------------------------------------------
    def settings(self) -> AppSettings:
        base = self.harness.settings()
        pipeline = base.pipelines[0].model_copy(update={
            "consent": None if self.consent is None else ConsentSettings(**self.consent),
            "events": None if self.events is None else EventsSettings(**{
                "email": "email", "name": "event", "params": ["plan", "seats"],
                "source": {"connector": "sql", "url": self.harness.source.url,
                           "table": "crm_events", "key": "id", "cursor": "id"},
                **self.events}),
        })
        mailtrap = base.mailtrap.model_copy(update={
            "pacing": base.mailtrap.pacing.model_copy(update={"account": self.pacing})})
        return base.model_copy(update={"pipelines": [pipeline], "mailtrap": mailtrap})

    def client(self) -> MailtrapClient:
        return MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL,
                              transport=self.harness.transport, retry_initial=0.01,
                              retry_max=0.1, max_retries=6,
                              download_transport=InProcessTransport(self.harness.double.app))

    def job(self, **kwargs: Any) -> SyncJob:
        settings = self.settings()
        return SyncJob(settings=settings, pipeline=settings.pipelines[0],
                       store=self.harness.store, client=self.client(), **kwargs)

    def run(self, kind: RunKind = RunKind.SYNC) -> RunResult:
        """One run, then a minute passes on the double's fake clock (the next scheduled run)."""
        result = self.job().run(kind)
        clock = self.harness.double.clock
        if isinstance(clock, FakeClock):
            clock.advance(61)
        return result

    def patches(self) -> list[dict[str, Any]]:
        """Bodies of the PATCH requests the double received (answered or not)."""
        return [r.body for r in self.harness.double.requests() if r.method == "PATCH"]


__all__ = ["T0", "Audience"]
