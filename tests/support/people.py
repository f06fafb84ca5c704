"""A small CRM table with soft deletes, and a harness that edits it while a sync reads it.

``People`` is a real ``people`` table (id, email, first_name, plan, deleted, updated_at) on
SQLite, PostgreSQL or MariaDB. ``PeopleHarness`` runs the real ``SyncJob`` on it with the state
store and the Mailtrap double of ``tests.support.harness.Harness``; ``during_run`` schedules
source edits from the observer's ``records_read`` hook, so they land between two pages of one
read. ``listed`` is what Mailtrap holds in the pipeline's list; ``expected`` what it should
hold. With ``plans`` set, the pipeline also has lists by the ``plan`` column (``PLAN_LISTS``)
and ``assert_exact`` checks every contact's memberships of the managed lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from sync_service import job as job_module
from sync_service.job import RunResult
from sync_service.mapping import Mapper, contact_hash
from sync_service.memberships import Memberships
from sync_service.models import ImportResult, RunOutcome
from sync_service.settings import AppSettings
from tests.support.harness import BASE_URL, Harness

T0 = datetime(2026, 3, 1, 12, 0, 0)
PIPELINE = "customers"
PLAN_LISTS = {"pro": "Pro customers", "free": "Free users"}  # other plans: no list of their own

_metadata = sa.MetaData()
people = sa.Table(
    "people", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(100)),
    sa.Column("plan", sa.String(20)),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
# The same table without a primary key: a source that may hold two rows for one key.
_loose_metadata = sa.MetaData()
loose_people = sa.Table(
    "people", _loose_metadata,
    sa.Column("id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(100)),
    sa.Column("plan", sa.String(20)),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


class People:
    """The source table; every write moves ``updated_at`` past every earlier write."""

    def __init__(self, url: str, *, unique_key: bool = True) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.table = people if unique_key else loose_people
        self.table.metadata.create_all(self.engine)
        self.clock = T0

    def close(self) -> None:
        self.engine.dispose()

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def insert(self, key: int, email: str, first_name: str = "F1",
               plan: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(
                id=key, email=email, first_name=first_name, plan=plan, deleted=False,
                updated_at=self.tick()))

    def update(self, key: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.update().where(self.table.c.id == key).values(
                updated_at=self.tick(), **values))

    def delete(self, key: int) -> None:
        """A soft delete, as CRMs do it."""
        self.update(key, deleted=True)

    def rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(self.table)).mappings()]

    def expected(self) -> dict[str, dict[str, Any]]:
        """email → fields, as Mailtrap's list should hold them."""
        return {r["email"]: {"first_name": r["first_name"]}
                for r in self.rows() if not r["deleted"]}

    def memberships(self) -> dict[str, set[str]]:
        """email → the managed lists (``Customers`` and the plan's list) it should be on."""
        return {r["email"]: {"Customers"} | ({PLAN_LISTS[r["plan"]]} if r["plan"] in PLAN_LISTS
                                             else set())
                for r in self.rows() if not r["deleted"]}


@dataclass
class _Editor:
    """The run observer: applies scheduled edits after the n-th chunk is read."""

    edits: dict[int, list[Callable[[], None]]] = field(default_factory=dict)
    chunks: int = 0

    def records_read(self, pipeline: str, count: int) -> None:
        self.chunks += 1
        for edit in self.edits.pop(self.chunks, []):
            edit()

    def import_done(self, pipeline: str, result: ImportResult) -> None:
        pass


class PeopleHarness(Harness):
    """``Harness`` over ``People``: soft deletes on, one text field, small pages."""

    table_name = "people"
    key_column = "id"
    plans = False  # lists by the plan column too

    def settings(self) -> AppSettings:
        by_plan = {"lists_by_column": {"column": "plan", "values": PLAN_LISTS}}
        return AppSettings(
            state={"url": self.state_url},
            mailtrap={"api_url": BASE_URL, "poll_interval": 0.01, "poll_max_interval": 0.05,
                      "max_retries": 6},
            pipelines=[{
                "name": PIPELINE, "lists": self.lists, "batch_size": self.batch_size,
                "source": {"connector": "sql", "url": self.source.url,
                           "table": self.table_name, "key": self.key_column,
                           "cursor": "updated_at", "lookback": self.lookback,
                           "fetch_size": self.fetch_size, "deleted_column": "deleted"},
                "mapping": {"email": "email", "fields": {"first_name": "first_name"}},
                **(by_plan if self.plans else {}),
            }],
        )

    def sync(self, during: dict[int, list[Callable[[], None]]] | None = None) -> RunResult:
        """One sync; ``during``: chunk number → source edits made once it has been read."""
        result = self.job(observer=_Editor(dict(during or {}))).run()
        assert result.outcome is RunOutcome.SUCCEEDED, result.error
        return result

    def list_id(self) -> int:
        return next(i for i, name in self.double.lists().items() if name == "Customers")

    def listed(self) -> dict[str, dict[str, Any]]:
        """email → fields of the contacts in the pipeline's list, as the double holds them."""
        found = self.double.contacts()
        if not any(name == "Customers" for name in self.double.lists().values()):
            return {}
        list_id = self.list_id()
        return {email: dict(c.fields) for email, c in found.items() if list_id in c.list_ids}

    def assert_exact(self) -> None:
        """Mailtrap's list equals the source, and every stored hash is what Mailtrap holds;
        with ``plans``, each contact is on exactly the managed lists its row says."""
        source = self.source
        assert isinstance(source, People)
        assert self.listed() == source.expected()
        memberships = self._assert_memberships(source) if self.plans else None
        mapper = Mapper(email_column="email", fields={"first_name": "first_name"},
                        field_types={"first_name": "text"}, list_ids=(self.list_id(),),
                        memberships=memberships,
                        managed=memberships.ids if memberships is not None else ())
        live = {str(r["id"]): r for r in source.rows() if not r["deleted"]}
        stored = self.store.get_contacts(PIPELINE, [str(r["id"]) for r in source.rows()])
        held = {k: c for k, c in stored.items() if c.hash != "deleted"}
        assert set(held) == set(live)
        for key, row in live.items():
            contact = mapper.contact(row)
            assert held[key].email == contact.email
            assert held[key].hash == contact_hash(contact)

    def _assert_memberships(self, source: People) -> Memberships:
        """Live rows' contacts are on their managed lists, every other contact on none."""
        names = self.double.lists()
        ids = {name: i for i, name in names.items()}
        managed = {"Customers", *PLAN_LISTS.values()}
        want = source.memberships()
        found = {e: {names[i] for i in c.list_ids} & managed
                 for e, c in self.double.contacts().items()}
        assert {e: found.get(e) for e in want} == want
        assert {e: lists for e, lists in found.items() if e not in want and lists} == {}
        return Memberships(column="plan", by_value={v: ids[n] for v, n in PLAN_LISTS.items()})


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job decides two records at a time (the source pages are set by ``fetch_size``)."""
    monkeypatch.setattr(job_module, "READ_CHUNK", 2)
