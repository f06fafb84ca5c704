"""Bad input from the source, end to end: every bad row gets a recorded outcome with its reason,
every good row lands exactly, nothing is sent half right, and a vanished column fails the pipeline
with an error naming it.

The source is a ``people`` table whose value columns are text, so any value can be stored and
the mapping alone decides whether it fits the Mailtrap field (text, integer, float, boolean,
date). Traffic goes to the Mailtrap double behind spec validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from sync_service.job import RunResult, SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RejectKind, RunOutcome
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from tests.support.harness import BASE_URL
from tests.support.openapi import ValidatingTransport

T0 = datetime(2026, 3, 1, 12, 0, 0)
FIELDS = {"name": "text", "seats": "integer", "score": "float", "vip": "boolean", "since": "date"}
_metadata = sa.MetaData()
people = sa.Table(
    "people", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.Text),
    *(sa.Column(name, sa.Text) for name in FIELDS),
    sa.Column("updated_at", sa.DateTime),  # no index: SQLite cannot drop an indexed column
)


@dataclass
class People:
    """The pipeline over ``people``: source, state store, job factory, the double."""

    url: str
    state: StateStore
    double: MailtrapDouble
    transport: ValidatingTransport

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url)
        _metadata.create_all(self.engine)
        for tag, data_type in FIELDS.items():
            self.double.add_field(tag, data_type)
        self.at = T0

    def add(self, key: int, email: str | None, **values: Any) -> None:
        """A row at the next cursor value; unset fields get plain valid values."""
        self.at += timedelta(seconds=1)
        row = {"name": f"Name{key}", "seats": str(key), "score": "1.5", "vip": "yes",
               "since": "2024-02-03", **values}
        with self.engine.begin() as conn:
            conn.execute(sa.delete(people).where(people.c.id == key))
            conn.execute(people.insert(), {"id": key, "email": email, "updated_at": self.at,
                                           **row})

    def run(self) -> RunResult:
        settings = AppSettings(
            state={"url": "sqlite://"},
            mailtrap={"api_url": BASE_URL, "poll_interval": 0.01, "poll_max_interval": 0.05},
            pipelines=[{
                "name": "people", "lists": ["People"],
                "source": {"connector": "sql", "url": self.url, "table": "people", "key": "id",
                           "cursor": "updated_at", "lookback": 0},
                "mapping": {"email": "email", "fields": {tag: tag for tag in FIELDS}},
            }],
        )
        client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, transport=self.transport,
                                retry_initial=0.01)
        return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=self.state,
                       client=client).run()

    def reasons(self) -> dict[str, tuple[RejectKind, str]]:
        return {r.source_key: (r.kind, r.reason) for r in self.state.list_rejections("people")}

    def sent(self) -> dict[str, dict[str, Any]]:
        return {email: dict(c.fields) for email, c in self.double.contacts().items()}


def _people(url: str, sqlite_url: str, double: MailtrapDouble,
            transport: ValidatingTransport) -> Iterator[People]:
    state = StateStore.from_url(sqlite_url.replace(".db", "-state.db"))
    state.ensure_schema()
    made = People(url, state, double, transport)
    yield made
    made.engine.dispose()
    state.close()


@pytest.fixture
def src(sqlite_url: str, double: MailtrapDouble,
        mailtrap_transport: ValidatingTransport) -> Iterator[People]:
    """The people pipeline over a SQLite source."""
    yield from _people(sqlite_url, sqlite_url, double, mailtrap_transport)


@pytest.fixture
def any_src(any_db_url: str, sqlite_url: str, double: MailtrapDouble,
            mailtrap_transport: ValidatingTransport) -> Iterator[People]:
    """The people pipeline over a source on each engine (SQLite, PostgreSQL, MariaDB)."""
    yield from _people(any_db_url, sqlite_url, double, mailtrap_transport)


def _valid(key: int) -> dict[str, Any]:
    return {"name": f"Name{key}", "seats": key, "score": 1.5, "vip": True, "since": "2024-02-03"}


def test_unicode_and_idn_addresses_have_one_spelling(any_src: People) -> None:
    """Unicode local parts and IDN domains are sent once, IDN domains in ASCII form; another
    spelling of the same address on a second key is a duplicate naming the first."""
    any_src.add(1, "josé@example.com")
    any_src.add(2, "Zoë.Ünïcødé@EXAMPLE.com")
    any_src.add(3, "anna@bücher.de")
    any_src.add(4, " ANNA@XN--BCHER-KVA.DE ")
    any_src.add(5, "名前@example.com", name="名前 ✓")

    result = any_src.run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert any_src.sent() == {
        "josé@example.com": _valid(1), "zoë.ünïcødé@example.com": _valid(2),
        "anna@xn--bcher-kva.de": _valid(3), "名前@example.com": {**_valid(5), "name": "名前 ✓"},
    }
    assert any_src.reasons() == {"4": (
        RejectKind.DUPLICATE, "email anna@xn--bcher-kva.de already belongs to source key 3")}


def test_emails_differing_only_by_case_are_one_contact(src: People) -> None:
    """Two keys whose emails differ only by case make one contact; the later key is a recorded
    duplicate, in the same run and in a later one."""
    src.add(1, "Foo@Example.com")
    src.add(2, "foo@example.com")
    first = src.run()
    src.add(3, "FOO@EXAMPLE.COM", name="Other")
    second = src.run()

    assert (first.counts["duplicate"], second.counts["duplicate"]) == (1, 1)
    assert src.sent() == {"foo@example.com": _valid(1)}
    assert {k: kind for k, (kind, _) in src.reasons().items()} == {
        "2": RejectKind.DUPLICATE, "3": RejectKind.DUPLICATE}
    assert all("source key 1" in reason for _, reason in src.reasons().values())


@pytest.mark.parametrize(("email", "why"), [
    (None, "email is missing"), ("", "email is missing"), ("   ", "email is missing"),
    ("not-an-email", "invalid email"), ("two@@example.com", "invalid email"),
    ("dot.@example.com", "invalid email"), ("x@nodot", "invalid email"),
    ("nul\x00@example.com", "NUL character"), ("with space@example.com", "invalid email"),
])
def test_missing_or_malformed_email_is_recorded_not_sent(src: People, email: str | None,
                                                         why: str) -> None:
    """A row without a usable email is recorded as invalid_email with the reason; the rows
    around it are sent, and the watermark moves past it."""
    src.add(1, "before@example.com")
    src.add(2, email)
    src.add(3, "after@example.com")

    result = src.run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert sorted(src.sent()) == ["after@example.com", "before@example.com"]
    kind, reason = src.reasons()["2"]
    assert kind is RejectKind.INVALID_EMAIL
    assert why in reason
    assert src.run().counts.get("read", 0) == 0


@pytest.mark.parametrize(("values", "field", "why"), [
    ({"name": "x" * 256}, "name", "256 characters, over Mailtrap's 255"),
    ({"name": "nul\x00byte"}, "name", "NUL character"),
    ({"seats": "abc"}, "seats", "'abc' is not an integer"),
    ({"seats": "3.5"}, "seats", "is not an integer"),
    ({"score": "many"}, "score", "'many' is not a number"),
    ({"score": "1e400"}, "score", "not a finite number"),
    ({"vip": "maybe"}, "vip", "'maybe' is not a boolean"),
    ({"since": "2024-02-30"}, "since", "is not a yyyy-mm-dd date"),
])
def test_value_that_does_not_fit_its_field_is_recorded_not_sent(
        src: People, values: dict[str, str], field: str, why: str) -> None:
    """A value that does not fit its Mailtrap field rejects the row, naming the field; the row
    is not sent at all rather than sent without that field."""
    src.add(1, "good@example.com", name="y" * 255)
    src.add(2, "bad@example.com", **values)

    result = src.run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert src.sent() == {"good@example.com": {**_valid(1), "name": "y" * 255}}
    kind, reason = src.reasons()["2"]
    assert kind is RejectKind.INVALID_VALUE
    assert f"field {field} (column {field})" in reason
    assert why in reason


def test_row_that_turns_bad_keeps_the_last_good_contact(src: People) -> None:
    """A synced row edited into a bad value is recorded; Mailtrap and the stored hash keep the
    last good version, and the fixed row is sent again."""
    src.add(1, "kept@example.com")
    assert src.run().outcome is RunOutcome.SUCCEEDED
    before = src.state.get_contacts("people", ["1"])["1"]
    src.add(1, "kept@example.com", seats="lots")

    assert src.run().counts["invalid"] == 1
    assert src.sent() == {"kept@example.com": _valid(1)}
    assert src.state.get_contacts("people", ["1"])["1"] == before

    src.add(1, "kept@example.com", seats="12")
    assert src.run().counts["updated"] == 1
    assert src.sent() == {"kept@example.com": {**_valid(1), "seats": 12}}
    assert src.reasons() == {}


@pytest.mark.parametrize("column", ["seats", "email", "updated_at"])
def test_column_that_disappeared_fails_the_pipeline_naming_it(src: People,
                                                              column: str) -> None:
    """A mapped, email or cursor column dropped since the last run fails the run with an error
    naming it; nothing is sent and no state moves."""
    src.add(1, "one@example.com")
    assert src.run().outcome is RunOutcome.SUCCEEDED
    mark = src.state.get_watermark("people")
    src.add(2, "two@example.com")
    with src.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE people DROP COLUMN {column}"))
    writes = sum(r.is_write for r in src.double.requests())

    result = src.run()

    assert result.outcome is RunOutcome.FAILED
    error = result.error or ""
    assert (f"does not return: {column} " in error
            or f"column {column!r} (`cursor`) not found" in error), error
    assert sum(r.is_write for r in src.double.requests()) == writes
    assert src.state.get_watermark("people") == mark
    assert src.state.count_contacts("people") == 1
