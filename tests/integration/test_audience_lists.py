"""Lists that follow the data: a column's value and boolean columns pick lists; a contact moves
between them in one import; lists the pipeline does not manage are never touched (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sync_service.job import RunResult, SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunOutcome
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from tests.support.openapi import ValidatingTransport

BASE_URL = "https://mailtrap.test"
T0 = datetime(2026, 3, 1, 12, 0, 0)
_metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("plan", sa.String(20)),
    sa.Column("is_vip", sa.String(10)),
    sa.Column("updated_at", sa.DateTime),
)


class Pipeline:
    """An `accounts` table synced with lists by plan and a VIP flag (requests validated)."""

    def __init__(self, tmp_path: Path, double: MailtrapDouble,
                 transport: ValidatingTransport) -> None:
        self.source_url = f"sqlite:///{tmp_path}/crm.db"
        self.engine = sa.create_engine(self.source_url)
        _metadata.create_all(self.engine)
        self.double, self.transport = double, transport
        self.store = StateStore.from_url(f"sqlite:///{tmp_path}/state.db")
        self.store.ensure_schema()

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()

    def write(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            for row in rows:
                conn.execute(sa.delete(accounts).where(accounts.c.id == row["id"]))
                conn.execute(accounts.insert(), [{"is_vip": None, **row}])

    def run(self) -> RunResult:
        settings = AppSettings(
            mailtrap={"api_url": BASE_URL, "poll_interval": 0.01, "poll_max_interval": 0.05},
            pipelines=[{
                "name": "accounts", "lists": ["Customers"],
                "lists_by_column": {"column": "plan",
                                    "values": {"pro": "Pro customers", "free": "Free users"},
                                    "flags": {"is_vip": "VIP"}},
                "source": {"connector": "sql", "url": self.source_url, "table": "accounts",
                           "key": "id", "cursor": "updated_at", "lookback": 0},
            }],
        )
        client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL,
                                transport=self.transport, retry_initial=0.01, retry_max=0.1)
        return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=self.store,
                       client=client).run()

    def lists_of(self, email: str) -> set[str]:
        names = self.double.lists()
        return {names[i] for i in self.double.contacts()[email].list_ids}


@pytest.fixture
def p(tmp_path: Path, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[Pipeline]:
    made = Pipeline(tmp_path, double, mailtrap_transport)
    yield made
    made.close()


def test_lists_by_value_and_flag_are_created_and_filled(p: Pipeline) -> None:
    """The first sync creates the static and dynamic lists and puts each contact on the static
    list, the list of its plan and, when its flag is true, the VIP list."""
    p.write([{"id": 1, "email": "a@example.com", "plan": "free", "updated_at": T0},
             {"id": 2, "email": "b@example.com", "plan": "pro", "is_vip": "yes",
              "updated_at": T0},
             {"id": 3, "email": "c@example.com", "plan": "trial", "updated_at": T0}])
    result = p.run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert sorted(p.double.lists().values()) == ["Customers", "Free users", "Pro customers",
                                                  "VIP"]
    assert p.lists_of("a@example.com") == {"Customers", "Free users"}
    assert p.lists_of("b@example.com") == {"Customers", "Pro customers", "VIP"}
    assert p.lists_of("c@example.com") == {"Customers"}  # a value with no list


def test_a_plan_change_moves_the_contact_in_one_import_and_spares_unmanaged_lists(
        p: Pipeline) -> None:
    """free → pro: one import entry includes the Pro list and excludes the Free one; the
    contact's unmanaged list (added in Mailtrap by hand) stays."""
    p.write([{"id": 1, "email": "a@example.com", "plan": "free", "updated_at": T0}])
    assert p.run().outcome is RunOutcome.SUCCEEDED
    newsletter = p.double.add_list("Newsletter")
    p.double.add_contact("a@example.com", list_ids=[newsletter])
    before = len(p.double.imports())

    p.write([{"id": 1, "email": "a@example.com", "plan": "pro", "is_vip": "true",
              "updated_at": T0 + timedelta(hours=1)}])
    result = p.run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    imports = p.double.imports()[before:]
    assert len(imports) == 1
    (entry,) = imports[0].contacts
    ids = {name: i for i, name in p.double.lists().items()}
    assert sorted(entry["list_ids_included"]) == sorted(
        [ids["Customers"], ids["Pro customers"], ids["VIP"]])
    assert entry["list_ids_excluded"] == [ids["Free users"]]
    assert p.lists_of("a@example.com") == {"Customers", "Pro customers", "VIP", "Newsletter"}

    p.write([{"id": 1, "email": "a@example.com", "plan": "free", "is_vip": "false",
              "updated_at": T0 + timedelta(hours=2)}])
    assert p.run().outcome is RunOutcome.SUCCEEDED
    assert p.lists_of("a@example.com") == {"Customers", "Free users", "Newsletter"}


def test_a_flag_that_is_not_a_boolean_rejects_only_its_contact(p: Pipeline) -> None:
    """A VIP flag holding "maybe" rejects its row naming the column; the other row is sent."""
    p.write([{"id": 1, "email": "a@example.com", "plan": "free", "is_vip": "maybe",
              "updated_at": T0},
             {"id": 2, "email": "b@example.com", "plan": "pro", "updated_at": T0}])
    result = p.run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert set(p.double.contacts()) == {"b@example.com"}
    (rejection,) = p.store.list_rejections("accounts")
    assert "column is_vip" in rejection.reason


def test_lists_by_column_needs_column_and_values_together() -> None:
    """`column` without `values` (or neither form) is a configuration error."""
    base: dict[str, Any] = {"name": "p", "source": {"connector": "sql", "url": "sqlite://",
                                                     "table": "t", "key": "id",
                                                     "cursor": "updated_at"}}
    with pytest.raises(ValueError, match="`column` and `values` go together"):
        AppSettings(pipelines=[{**base, "lists_by_column": {"column": "plan"}}])
    with pytest.raises(ValueError, match="set `column` and `values`, or `flags`"):
        AppSettings(pipelines=[{**base, "lists_by_column": {}}])
