"""Property: whatever edits a CRM makes while syncs read it in small pages, syncing until quiet
leaves Mailtrap's list equal to the source and every stored hash equal to what Mailtrap holds.

Edits include list moves (``plan``: the row's plan picks "Pro customers", "Free users" or
neither, and each contact must end on exactly its managed lists), hard deletes (``erase``: the
row is gone, found by the key scan each run makes here, the brake set wide open) and rows coming
back under an erased key."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_service.models import RunOutcome
from sync_service.settings import AppSettings
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.conftest import PG_ENV, _fresh_database, _server_url
from tests.support.double_fixtures import validating_transport
from tests.support.people import PLAN_LISTS, People, PeopleHarness, _Editor, small_pages

pytestmark = pytest.mark.usefixtures(small_pages.__name__)

KEYS = range(1, 7)
EMAILS = [f"e{i}@example.com" for i in range(8)]
PLANS = ["pro", "free", "trial", None]

Edit = tuple[str, int, int]
_edits = st.tuples(st.sampled_from(["field", "plan", "move", "swap", "delete", "erase",
                                    "create"]),
                   st.sampled_from(list(KEYS)), st.integers(0, len(EMAILS) - 1))
# Per sync: (chunk after which the edit is made, 0 = before the run starts, edit)
_runs = st.lists(st.lists(st.tuples(st.integers(0, 4), _edits), max_size=6),
                 min_size=1, max_size=3)


def _apply(src: People, edit: Edit) -> None:
    """Make one edit if it keeps the source sane (live addresses unique)."""
    kind, key, pick = edit
    rows = {r["id"]: r for r in src.rows()}
    taken = {r["email"] for r in rows.values() if not r["deleted"]}
    free = [e for e in EMAILS[pick:] + EMAILS[:pick] if e not in taken]
    row = rows.get(key)
    live = row is not None and not row["deleted"]
    if kind == "field" and live:
        src.update(key, first_name=f"N{pick}")
    elif kind == "plan" and live:
        src.update(key, plan=PLANS[pick % len(PLANS)])
    elif kind == "move" and live and free:
        src.update(key, email=free[0])
    elif kind == "swap" and live:
        other = next((k for k in sorted(rows) if k != key and not rows[k]["deleted"]
                      and k % 3 == pick % 3), None)
        if other is not None and row is not None:
            mine, theirs = row["email"], rows[other]["email"]
            src.update(key, email="swap-tmp@example.com")
            src.update(other, email=mine)
            src.update(key, email=theirs)
    elif kind == "delete" and live:
        src.delete(key)
    elif kind == "erase" and row is not None:
        with src.engine.begin() as conn:
            conn.execute(sa.delete(src.table).where(src.table.c.id == key))
    elif kind == "create" and not live and free:
        if row is None:
            src.insert(key, free[0], f"C{pick}")
        else:
            src.update(key, deleted=False, email=free[0], first_name=f"R{pick}")


class _ScanningHarness(PeopleHarness):
    """Lists by plan, a key scan on every run, and a brake that never holds (hard deletes are
    edits here)."""

    plans = True

    def settings(self) -> AppSettings:
        settings = super().settings()
        pipeline = settings.pipelines[0].model_copy(
            update={"delete_scan_every": 1, "max_delete_share": 1.0})
        return settings.model_copy(update={"pipelines": [pipeline]})


def _sync(h: PeopleHarness, edits: list[tuple[int, Edit]]) -> None:
    src = h.source
    assert isinstance(src, People)
    during: dict[int, list[Callable[[], None]]] = {}
    for when, edit in edits:
        if when == 0:
            _apply(src, edit)
        else:
            during.setdefault(when, []).append(lambda e=edit: _apply(src, e))
    editor = _Editor(during)
    result = h.job(observer=editor).run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    for left in editor.edits.values():  # the run had fewer chunks: made after it
        for edit_now in left:
            edit_now()


def _until_quiet(state_url: str, source_url: str, runs: list[list[tuple[int, Edit]]],
                 batch_size: int = 50_000) -> None:
    double = MailtrapDouble()
    for name in ["Customers", *PLAN_LISTS.values()]:  # made here: fewer requests an example
        double.add_list(name)
    transport = validating_transport(double)
    h = _ScanningHarness(double, transport, People(source_url),  # type: ignore[arg-type]
                      state_url, fetch_size=2, batch_size=batch_size)
    try:
        src = h.source
        assert isinstance(src, People)
        for key in range(1, 5):
            src.insert(key, EMAILS[key - 1], plan=PLANS[key % len(PLANS)])
        for edits in runs:
            _sync(h, edits)
        for _ in range(4):
            writes = sum(r.is_write for r in double.requests())
            _sync(h, [])
            if sum(r.is_write for r in double.requests()) == writes:
                break
        else:
            pytest.fail("syncs never went quiet")
        h.assert_exact()
    finally:
        h.close()
        transport.close()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=_runs, batch_size=st.sampled_from([2, 3, 50_000]))
def test_syncing_until_quiet_makes_mailtrap_equal_the_source(
        runs: list[list[tuple[int, Edit]]], batch_size: int) -> None:
    """Random edits between pages of several syncs (imports of 2, 3 or up to 50,000
    contacts): after syncs until quiet, Mailtrap's lists equal the source."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / uuid.uuid4().hex}.db"
        _until_quiet(url.replace(".db", "-state.db"), url, runs, batch_size)


@pytest.mark.postgres
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=_runs)
def test_the_same_with_the_state_in_postgres(runs: list[list[tuple[int, Edit]]]) -> None:
    """The same property with the state store on PostgreSQL (a fresh database per example)."""
    databases = _fresh_database(_server_url(PG_ENV, "PostgreSQL"), isolation="AUTOCOMMIT")
    state = next(databases)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _until_quiet(state, f"sqlite:///{Path(tmp) / uuid.uuid4().hex}.db", runs)
    finally:
        databases.close()
