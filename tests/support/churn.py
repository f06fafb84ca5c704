"""List moves and deletions for the resilience tests (the audience model under kills and faults).

``ChurnSource`` is the ``customers`` table of ``tests.support.harness`` with two more columns:
``plan`` (pro, free or trial; ``LISTS_BY_COLUMN`` puts pro and free rows on "Pro customers" and
"Free users", trial rows on neither) and ``deleted`` (a soft delete). ``churn`` makes one round
of CRM edits: plan moves, soft deletes, hard deletes (the row is gone: only a key scan finds
it), purges (a soft-deleted row removed for good) and keys coming back (undeleted, or inserted
again). ``ChurnHarness`` is the in-process pipeline over it; ``assert_audience`` checks that
Mailtrap equals the source, list memberships included.

Two rules keep a crash test exact, and say what it does not cover: every edit gives its row
values it never had (a row set back to its last confirmed values after an import was accepted
but its id lost is the gap ``test_kill_restart`` pins as an expected failure), and only keys
whose contact the state store has confirmed are deleted (a key whose only import was lost and
that is then deleted is the same gap). Each key is deleted at most once, so the removal entries
a test counts are those of one deletion.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from sync_service.diff import TOMBSTONE
from sync_service.models import StoredContact
from sync_service.settings import AppSettings, ListsByColumn
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.harness import T0, Harness, Source

STATIC = "Customers"
PLAN_LISTS = {"pro": "Pro customers", "free": "Free users"}
PLANS = ("pro", "free", "trial")  # trial: on no list of its own
MANAGED = frozenset({STATIC, *PLAN_LISTS.values()})
LISTS_BY_COLUMN = {"column": "plan", "values": PLAN_LISTS}
UNMANAGED = "Newsletter"

_metadata = sa.MetaData()
planned = sa.Table(
    "customers", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(300)),
    sa.Column("last_name", sa.String(80)),
    sa.Column("seats", sa.Integer),
    sa.Column("updated_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")),
    sa.Column("plan", sa.String(20)),
    sa.Column("deleted", sa.Integer),
)

Confirmed = Callable[[list[str]], Mapping[str, StoredContact]]


@dataclass(frozen=True)
class Churn:
    """How many rows one round touches, of each kind."""

    moves: int = 30  # plan changed (a list move), first name with it
    soft: int = 10  # deleted = 1
    hard: int = 5  # the row removed
    purge: int = 1  # a soft-deleted row removed
    back: int = 2  # soft-deleted rows undeleted, and removed keys inserted again (each)


class ChurnSource(Source):
    """``customers`` with ``plan`` and ``deleted``; remembers every key's address and the rows
    it removed, so they can come back."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        with self.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE customers ADD COLUMN plan VARCHAR(20)"))
            conn.execute(sa.text("ALTER TABLE customers ADD COLUMN deleted INTEGER"))
        self.emails: dict[int, str] = {}
        self.removed: dict[int, dict[str, Any]] = {}
        self.ever_deleted: set[int] = set()

    def insert(self, ids: Iterable[int], *, at: datetime = T0, **values: Any) -> None:
        rows = [{"id": i, "email": f"user{i}@example.com", "first_name": f"First{i}",
                 "last_name": f"Last{i}", "seats": i % 50, "plan": PLANS[i % 3], "deleted": 0,
                 "updated_at": at, **values} for i in ids]
        self._insert(rows)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 5_000):
                conn.execute(planned.insert(), rows[start:start + 5_000])
        self.emails.update({r["id"]: r["email"].strip().lower() for r in rows})

    def update(self, ids: Iterable[int], *, at: datetime, **values: Any) -> None:
        self.edit(dict.fromkeys(ids, values), at=at)

    def edit(self, changes: Mapping[int, Mapping[str, Any]], *, at: datetime) -> None:
        """Each key's own values, in one transaction; cursors from ``at`` on, in key order."""
        with self.engine.begin() as conn:
            for offset, key in enumerate(sorted(changes)):
                conn.execute(planned.update().where(planned.c.id == key).values(
                    updated_at=at + timedelta(microseconds=offset), **changes[key]))

    def remove(self, ids: Iterable[int]) -> None:
        """Hard deletes: the rows are gone (kept here to come back later)."""
        wanted = list(ids)
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(planned).where(planned.c.id.in_(wanted))).mappings()
            self.removed.update({r["id"]: dict(r) for r in rows})
            conn.execute(sa.delete(planned).where(planned.c.id.in_(wanted)))

    def rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(planned)).mappings()]

    def expected(self) -> dict[str, dict[str, Any]]:
        """email → fields of every live row, as Mailtrap should hold them."""
        return {email: fields for email, (fields, _) in self.audience().items()}

    def audience(self) -> dict[str, tuple[dict[str, Any], set[str]]]:
        """email → (fields, managed lists) of every live row, as Mailtrap should hold them."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(
                planned.c.email, planned.c.first_name, planned.c.last_name, planned.c.seats,
                planned.c.plan).where(sa.func.coalesce(planned.c.deleted, 0) == 0)).all()
        return {email.strip().lower(): (
            {"first_name": first or "", "last_name": last or "",
             **({"seats": seats} if seats is not None else {})},
            {STATIC} | ({PLAN_LISTS[plan]} if plan in PLAN_LISTS else set()))
            for email, first, last, seats, plan in rows}

    def gone(self) -> set[str]:
        """Addresses of keys that were synced once and are now deleted or removed."""
        return set(self.emails.values()) - set(self.audience())


def churn(source: ChurnSource, rng: random.Random, *, at: datetime, tag: str,
          confirmed: Confirmed, spec: Churn = Churn()) -> dict[str, list[int]]:
    """One round of edits at ``at`` (and up to a second after); returns the keys by kind.

    ``confirmed`` gives the state store's contacts of some keys: only keys confirmed live are
    deleted or removed, only confirmed tombstones are purged (see the module docstring)."""
    with source.engine.connect() as conn:
        rows = {k: (plan, deleted) for k, plan, deleted in conn.execute(
            sa.select(planned.c.id, planned.c.plan, planned.c.deleted))}
    live = sorted(k for k, (_, deleted) in rows.items() if not deleted)
    soft = sorted(k for k, (_, deleted) in rows.items() if deleted)
    wanted = spec.soft + spec.hard
    picks = rng.sample([k for k in live if k not in source.ever_deleted],
                       min(3 * wanted + 10, len(live)))  # enough, once unconfirmed are left out
    stored = confirmed([str(k) for k in picks + soft])
    fresh = [k for k in picks if str(k) in stored and stored[str(k)].hash != TOMBSTONE]
    done: dict[str, list[int]] = {}
    done["moves"] = sorted(rng.sample(live, min(spec.moves, len(live))))
    source.edit({key: {"plan": rng.choice([p for p in PLANS if p != rows[key][0]]),
                       "first_name": f"Plan{tag}-{key}"} for key in done["moves"]},
                at=at + timedelta(milliseconds=100))
    doomed = fresh[:wanted]
    done["soft"], done["hard"] = sorted(doomed[:spec.soft]), sorted(doomed[spec.soft:])
    source.update(done["soft"], at=at + timedelta(milliseconds=300), deleted=1)
    tombs = [k for k in soft if str(k) in stored and stored[str(k)].hash == TOMBSTONE]
    done["purge"] = sorted(rng.sample(tombs, min(spec.purge, len(tombs))))
    source.remove(done["hard"] + done["purge"])
    source.ever_deleted.update(doomed)
    done["undeleted"] = _undelete(source, rng, [k for k in soft if k not in done["purge"]],
                                  spec.back, at=at + timedelta(milliseconds=500), tag=tag)
    done["reinserted"] = _reinsert(source, rng, spec.back, at=at + timedelta(milliseconds=600),
                                   tag=tag, exclude=set(doomed) | set(done["purge"]))
    return done


def _undelete(source: ChurnSource, rng: random.Random, soft: Sequence[int], count: int, *,
              at: datetime, tag: str) -> list[int]:
    keys = sorted(rng.sample(list(soft), min(count, len(soft))))
    source.edit({key: {"deleted": 0, "plan": rng.choice(PLANS), "first_name": f"Back{tag}-{key}"}
                 for key in keys}, at=at)
    return keys


def _reinsert(source: ChurnSource, rng: random.Random, count: int, *, at: datetime, tag: str,
              exclude: set[int]) -> list[int]:
    """Removed keys inserted again, with new values (this round's removals stay away)."""
    waiting = sorted(k for k in source.removed if k not in exclude)
    keys = sorted(rng.sample(waiting, min(count, len(waiting))))
    rows = [{**source.removed.pop(k), "updated_at": at + timedelta(microseconds=n), "deleted": 0,
             "plan": rng.choice(PLANS), "first_name": f"Back{tag}-{k}"}
            for n, k in enumerate(keys)]
    source._insert(rows)
    return keys


class ChurnHarness(Harness):
    """``Harness`` over a ``ChurnSource``: lists by plan, soft deletes, a key scan every run."""

    on_delete: str = "remove_from_lists"

    @property
    def crm(self) -> ChurnSource:
        """The source, as the ``ChurnSource`` it is."""
        assert isinstance(self.source, ChurnSource)
        return self.source

    def settings(self) -> AppSettings:
        settings = super().settings()
        pipeline = settings.pipelines[0]
        chosen = pipeline.model_copy(update={
            "source": pipeline.source.model_copy(update={"deleted_column": "deleted"}),
            "lists_by_column": ListsByColumn(**LISTS_BY_COLUMN), "on_delete": self.on_delete,
            "delete_scan_every": 1})
        return settings.model_copy(update={"pipelines": [chosen]})


def assert_audience(double: MailtrapDouble, source: ChurnSource,
                    unmanaged: Iterable[str] = ()) -> None:
    """Mailtrap equals the source: each live row's contact has its fields and exactly its
    managed lists; every other contact is on none of them; ``unmanaged`` addresses still in
    Mailtrap stayed on the list the pipeline does not manage."""
    names = double.lists()
    contacts = double.contacts()
    lists = {e: {names[i] for i in c.list_ids} for e, c in contacts.items()}
    audience = source.audience()
    want = {e: managed for e, (_, managed) in audience.items()}
    assert {e: dict(contacts[e].fields) for e in want if e in contacts} == {
        e: fields for e, (fields, _) in audience.items()}
    assert {e: lists[e] & MANAGED for e in want} == want
    assert {e: m & MANAGED for e, m in lists.items() if e not in want and m & MANAGED} == {}
    assert all(UNMANAGED in lists[e] for e in unmanaged if e in contacts)
