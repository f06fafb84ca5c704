"""`mailtrap-sync demo`: a generated sample CRM in SQLite, synced into the local test double.

It writes ``crm.db``, ``mailtrap-sync.toml`` and the state store into one folder, starts the
Mailtrap test double as a real local HTTP server, and runs the real CLI code path three times:
the first run creates every contact, the second sends exactly the rows edited in between, the
third sends nothing. Nothing leaves the machine.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from sync_service.job import RunResult, SyncJob
from sync_service.logging import configure
from sync_service.models import RunOutcome
from sync_service.settings import load_settings
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble, serve
from sync_service.wiring import EXIT_FAILED, EXIT_OK, build_client, open_store

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Perlman", "Berners-Lee")
_PLANS = ("free", "starter", "business", "enterprise")
EDITED = 25
CONFIG = """\
[state]
url = "sqlite:///{state}"

[mailtrap]
account_id = 1001

[[pipelines]]
name = "customers"
lists = ["Customers"]
batch_size = 500

[pipelines.source]
connector = "sql"
url = "sqlite:///{crm}"
table = "customers"
key = "id"
cursor = "updated_at"

[pipelines.mapping]
email = "email"

[pipelines.mapping.fields]
first_name = "first_name"
last_name = "last_name"
plan = "plan"
seats = "seats"
signed_up = "signed_up"
"""

_metadata = sa.MetaData()
_customers = sa.Table(
    "customers", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(80)),
    sa.Column("last_name", sa.String(80)),
    sa.Column("plan", sa.String(40)),
    sa.Column("seats", sa.Integer),
    sa.Column("signed_up", sa.Date),
    sa.Column("updated_at", sa.DateTime, index=True),  # naive UTC, as most CRMs store it
)


def make_sample_crm(path: Path, rows: int, *, seed: int = 7) -> None:
    """A `customers` table with ``rows`` people, a few of them with unusable emails."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not security
    engine = sa.create_engine(f"sqlite:///{path}")
    start = datetime(2026, 1, 1)  # naive UTC, as the column holds it
    _metadata.create_all(engine)
    with engine.begin() as conn:
        batch = []
        for i in range(1, rows + 1):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            email = f"{first}.{last}.{i}@example.com".lower()
            if i % 400 == 0:
                email = f"{first} at {last}"  # an unusable address: recorded, not sent
            batch.append({
                "id": i, "email": email, "first_name": first, "last_name": last,
                "plan": rng.choice(_PLANS), "seats": rng.randint(1, 250),
                "signed_up": (start - timedelta(days=rng.randint(0, 900))).date(),
                "updated_at": start + timedelta(minutes=i),
            })
        conn.execute(_customers.insert(), batch)
    engine.dispose()


def edit_rows(path: Path, count: int) -> None:
    """Change the plan of ``count`` customers, as a CRM user would, moving their cursor on."""
    engine = sa.create_engine(f"sqlite:///{path}")
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        for step, row_id in enumerate(range(3, 3 + count * 7, 7)):
            conn.execute(_customers.update().where(_customers.c.id == row_id).values(
                plan="enterprise-plus", updated_at=now + timedelta(seconds=step)))
    engine.dispose()


def _prepare(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("crm.db", "state.db", "state.db-wal", "state.db-shm"):
        (folder / name).unlink(missing_ok=True)
    make_sample_crm(folder / "crm.db", rows)
    config = folder / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=(folder / "state.db").resolve(),
                                    crm=(folder / "crm.db").resolve()))
    return config


def _seed_fields(double: MailtrapDouble) -> None:
    """The custom fields a real account would already have."""
    for tag, data_type in (("first_name", "text"), ("last_name", "text"), ("plan", "text"),
                           ("seats", "integer"), ("signed_up", "date")):
        double.add_field(tag, data_type)


def run_demo(workdir: str, rows: int) -> int:
    console = Console()
    configure(level="WARNING")  # the demo shows its own summary; problems still get logged
    folder = Path(workdir)
    config = _prepare(folder, rows)
    double = MailtrapDouble()
    _seed_fields(double)
    with serve(double) as base_url:
        os.environ["MAILTRAP_API_URL"] = base_url
        os.environ["MAILTRAP_API_TOKEN"] = DEFAULT_TOKEN
        settings = load_settings(config)
        console.print(f"[bold]mailtrap-sync demo[/bold]: {rows} customers in {folder / 'crm.db'}"
                      f", Mailtrap test double at {base_url}")
        store = open_store(settings)
        results = []
        steps = [("first run", False), (f"second run, after editing {EDITED} rows", True),
                 ("third run, nothing changed", False)]
        try:
            with build_client(settings) as client:
                for title, edit_first in steps:
                    if edit_first:
                        edit_rows(folder / "crm.db", EDITED)
                    job = SyncJob(settings=settings, pipeline=settings.pipelines[0],
                                  store=store, client=client)
                    results.append(job.run())
                    _show_run(console, title, results[-1], double)
        finally:
            store.close()
        _show_contacts(console, double)
    console.print(f"Files are in {folder}/ — try: mailtrap-sync --config {config} status")
    ok = all(r.outcome is RunOutcome.SUCCEEDED for r in results)
    return EXIT_OK if ok else EXIT_FAILED


def _show_run(console: Console, title: str, result: RunResult, double: MailtrapDouble) -> None:
    counts = result.counts
    console.print(
        f"[bold]{title}[/bold]: {result.outcome}; read {counts.get('read', 0)}, "
        f"created {counts.get('created', 0)}, updated {counts.get('updated', 0)}, "
        f"unchanged {counts.get('unchanged', 0)}, invalid {counts.get('invalid', 0)}; "
        f"sent {counts.get('sent', 0)} in {counts.get('imports', 0)} imports; contacts in Mailtrap "
        f"{len(double.contacts())}" + (f"; error: {result.error}" if result.error else ""))


def _show_contacts(console: Console, double: MailtrapDouble) -> None:
    table = Table(title="a few contacts as the Mailtrap test double holds them")
    for column in ("email", "fields", "lists"):
        table.add_column(column)
    lists = double.lists()
    for email, contact in list(double.contacts().items())[:5]:
        table.add_row(email, ", ".join(f"{k}={v}" for k, v in sorted(contact.fields.items())),
                      ", ".join(lists.get(i, str(i)) for i in contact.list_ids))
    console.print(table)
