"""How a backlog of custom events drains under the account budget, next to a large import.

A SQLite CRM with N contacts and E queued events (one per contact, round robin) is synced by the
real ``SyncJob`` into the Mailtrap double (in-process, on a fake clock that moves one budget window
between runs, as a daemon's schedule would). Each run posts its imports first, then sends at most
the events' share of one window (``budget_share`` 0.5 of 200/60 s: 100). The script counts the
runs until the backlog is empty, checks that the first run's import carried every contact, that
every event arrived exactly once, and that no window of the double's clock held more than the
account's 200 requests.

    .venv/bin/python bench/bench_events_backlog.py [--contacts 50000] [--events 20000] [--json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import emit_json, machine, table

from sync_service.job import SyncJob
from sync_service.logging import configure
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunOutcome
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, FakeClock, MailtrapDouble
from sync_service.testing.mailtrap.transport import InProcessTransport

WINDOW_S = 61.0


def _source(path: Path, contacts: int, events: int) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    people = sa.Table("people", meta, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("email", sa.String(100)), sa.Column("first_name", sa.String(50)),
                      sa.Column("updated_at", sa.DateTime))
    activity = sa.Table("activity", meta, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("email", sa.String(100)), sa.Column("plan", sa.String(10)))
    meta.create_all(engine)
    stamp = datetime(2026, 1, 1)
    with engine.begin() as conn:
        conn.execute(people.insert(), [{"id": i, "email": f"p{i}@example.com",
                                        "first_name": f"P{i}", "updated_at": stamp}
                                       for i in range(1, contacts + 1)])
        conn.execute(activity.insert(), [{"id": e, "email": f"p{e % contacts + 1}@example.com",
                                          "plan": "pro"} for e in range(1, events + 1)])
    engine.dispose()
    return url


def run(contacts: int, events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        source = _source(Path(folder) / "crm.db", contacts, events)
        settings = AppSettings(
            state={"url": f"sqlite:///{folder}/state.db"},
            mailtrap={"api_url": "https://mailtrap.test", "poll_interval": 0.01,
                      "poll_max_interval": 0.05},
            pipelines=[{"name": "crm", "lists": ["Customers"],
                        "source": {"connector": "sql", "url": source, "table": "people",
                                   "key": "id", "cursor": "updated_at", "lookback": 0},
                        "mapping": {"fields": {"first_name": "first_name"}},
                        "events": {"name_value": "Imported", "params": ["plan"],
                                   "source": {"connector": "sql", "url": source,
                                              "table": "activity", "key": "id",
                                              "cursor": "id"}}}])
        clock = FakeClock()
        double = MailtrapDouble(clock=clock)
        double.add_field("first_name")
        store = StateStore.from_url(settings.state.url)
        store.ensure_schema()
        client = MailtrapClient(token=DEFAULT_TOKEN, base_url="https://mailtrap.test",
                                transport=InProcessTransport(double.app), retry_initial=0.01)
        per_run: list[int] = []
        started = time.perf_counter()
        first_import = 0
        while True:
            result = SyncJob(settings=settings, pipeline=settings.pipelines[0], store=store,
                             client=client).run()
            if result.outcome is not RunOutcome.SUCCEEDED:
                raise SystemExit(f"run {len(per_run) + 1} {result.outcome}: {result.error}")
            if not per_run:
                first_import = sum(len(i.contacts) for i in double.imports())
            per_run.append(result.counts.get("events_sent", 0))
            clock.advance(WINDOW_S)
            if store.audience_counts("crm")["events_backlog"] == 0:
                break
        elapsed = time.perf_counter() - started
        received = len(double.events())
        busiest = double.max_requests_in_window(60.0, contacts_only=True)
        store.close()
        client.close()
    if received != events or first_import != contacts or busiest > 200:
        raise SystemExit(f"unexpected: {received} events received of {events}, {first_import} "
                         f"contacts in the first run's imports, {busiest} requests in 60 s")
    return {"contacts": contacts, "events": events, "runs": len(per_run),
            "events_first_run": per_run[0], "events_per_run_max": max(per_run),
            "contacts_in_first_run_imports": first_import, "events_received": received,
            "max_requests_per_60s": busiest, "wall_s": round(elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure(json=False, level="WARNING")
    found = run(args.contacts, args.events)
    if args.json:
        emit_json({"machine": machine(), **found})
    else:
        print(table(["measure", "value"], [[k, str(v)] for k, v in found.items()]))


if __name__ == "__main__":
    main()
