"""Property: whatever edits a CRM makes while syncs read it in small pages, syncing until quiet
leaves Mailtrap's list equal to the source and every stored hash equal to what Mailtrap holds.

Edits include list moves (``plan``: the row's plan picks "Pro customers", "Free users" or
neither, and each contact must end on exactly its managed lists), hard deletes (``erase``: the
row is gone, found by the key scan each run makes here, the brake set wide open) and rows coming
back under an erased key."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_service.settings import AppSettings
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.conftest import PG_ENV, _fresh_database, _server_url
from tests.support.double_fixtures import validating_transport
from tests.support.edits import PLANS, Edit, sync_with_edits
from tests.support.people import PLAN_LISTS, People, PeopleHarness, small_pages

pytestmark = pytest.mark.usefixtures(small_pages.__name__)

KEYS = range(1, 7)
EMAILS = [f"e{i}@example.com" for i in range(8)]
_edits = st.tuples(st.sampled_from(["field", "plan", "move", "swap", "delete", "erase",
                                    "create"]),
                   st.sampled_from(list(KEYS)), st.integers(0, len(EMAILS) - 1))
# Per sync: (chunk after which the edit is made, 0 = before the run starts, edit)
_runs = st.lists(st.lists(st.tuples(st.integers(0, 4), _edits), max_size=6),
                 min_size=1, max_size=3)


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
    sync_with_edits(h, edits, EMAILS)


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
