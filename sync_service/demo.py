"""`mailtrap-sync demo`: a generated sample CRM, synced into the local test double.

The source is SQLite by default (``--source`` picks another: ``demo_sources()`` lists them; the
CRM sources run their own local test double). It writes the source's data,
``mailtrap-sync.toml`` and the state store into one folder, starts the
Mailtrap test double as a real local HTTP server, and runs the real CLI code path three times:
the first run creates every contact, the second sends exactly the rows edited in between, the
third sends nothing. Nothing leaves the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

# The sample data and the shape of a demo source live in demo_data, shared with demo_sources.
from sync_service.demo_data import EDITED, DemoSetup, DemoSource, edited_ids, sample_people
from sync_service.errors import ConfigError
from sync_service.job import RunResult, SyncJob
from sync_service.logging import configure
from sync_service.models import RunOutcome
from sync_service.settings import load_settings
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble, serve
from sync_service.wiring import EXIT_FAILED, EXIT_OK, build_client, open_store

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
{source}
[pipelines.mapping]
email = "{email}"

[pipelines.mapping.fields]
{fields}"""
SQL_SOURCE = """\
connector = "sql"
url = "sqlite:///{crm}"
table = "customers"
key = "id"
cursor = "updated_at"
"""
SQL_FIELDS = """\
first_name = "first_name"
last_name = "last_name"
plan = "plan"
seats = "seats"
signed_up = "signed_up"
"""


def _sql_setup(folder: Path, rows: int, _stack: ExitStack) -> DemoSource:
    crm = folder / "crm.db"
    crm.unlink(missing_ok=True)
    make_sample_crm(crm, rows)
    return DemoSource(SQL_SOURCE.format(crm=crm.resolve()), SQL_FIELDS,
                      lambda count: edit_rows(crm, count), f"{rows} customers in {crm}")


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
    engine = sa.create_engine(f"sqlite:///{path}")
    _metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(_customers.insert(), sample_people(rows, seed=seed))
    engine.dispose()


def edit_rows(path: Path, count: int) -> None:
    """Change the plan of ``count`` customers, as a CRM user would, moving their cursor on."""
    engine = sa.create_engine(f"sqlite:///{path}")
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        for step, row_id in enumerate(edited_ids(count)):
            conn.execute(_customers.update().where(_customers.c.id == row_id).values(
                plan="enterprise-plus", updated_at=now + timedelta(seconds=step)))
    engine.dispose()


def _prepare(folder: Path, source: DemoSource) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (folder / name).unlink(missing_ok=True)
    config = folder / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=(folder / "state.db").resolve(),
                                    source=source.source_toml, fields=source.fields_toml,
                                    email=source.email_column))
    return config


def _seed_fields(double: MailtrapDouble) -> None:
    """The custom fields a real account would already have."""
    for tag, data_type in (("first_name", "text"), ("last_name", "text"), ("plan", "text"),
                           ("seats", "integer"), ("signed_up", "date")):
        double.add_field(tag, data_type)


# Variables that would point the demo at a real state store, account or listener (the container
# image sets MAILTRAP_SYNC_STATE_URL): hidden while the demo runs, restored afterwards.
_HIDDEN = ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_WEB_LISTEN",
           "MAILTRAP_SYNC_CONFIG")


@contextmanager
def _demo_environment(base_url: str) -> Iterator[None]:
    """The environment the demo's settings load under: its double, its token, nothing else."""
    saved = {name: os.environ.get(name)
             for name in (*_HIDDEN, "MAILTRAP_API_URL", "MAILTRAP_API_TOKEN")}
    for name in _HIDDEN:
        os.environ.pop(name, None)
    os.environ["MAILTRAP_API_URL"] = base_url
    os.environ["MAILTRAP_API_TOKEN"] = DEFAULT_TOKEN
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def demo_sources() -> dict[str, DemoSetup]:
    """Every source the demo can run from, by name."""
    from sync_service.demo_sources import SETUPS  # noqa: PLC0415 - doubles load on demand

    return {"sql": _sql_setup, **SETUPS}


def run_demo(workdir: str, rows: int, source: str = "sql") -> int:
    setups = demo_sources()
    if source not in setups:
        raise ConfigError(f"demo --source {source}: not available (choose from "
                          f"{', '.join(sorted(setups))})")
    console = Console()
    configure(level="WARNING")  # the demo shows its own summary; problems still get logged
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    double = MailtrapDouble()
    _seed_fields(double)
    with ExitStack() as stack, serve(double) as base_url, _demo_environment(base_url):
        demo = setups[source](folder, rows, stack)
        config = _prepare(folder, demo)
        settings = load_settings(config)
        console.print(f"[bold]mailtrap-sync demo[/bold] from {source}: {demo.where}, "
                      f"Mailtrap test double at {base_url}")
        store = open_store(settings)
        results = []
        steps = [("first run", False), (f"second run, after editing {EDITED} records", True),
                 ("third run, nothing changed", False)]
        try:
            with build_client(settings) as client:
                for title, edit_first in steps:
                    if edit_first:
                        demo.edit(EDITED)
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
