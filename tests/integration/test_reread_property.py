"""Property: with the re-read skip engaged on every row (a lookback that re-reads the whole
table each sync), whatever edits a CRM makes between and during syncs, syncing until quiet
leaves Mailtrap's list equal to the source and every stored hash equal to what Mailtrap holds.

Edits include a bulk touch (every row given one new ``updated_at``, contents unchanged), field
edits, address moves and swaps, soft and hard deletes and keys coming back, made between two
pages of a run as well as between runs; imports of 2, 3 or up to 50,000 contacts.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_service.settings import AppSettings
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.double_fixtures import validating_transport
from tests.support.edits import Edit, sync_with_edits
from tests.support.people import People, PeopleHarness, small_pages

pytestmark = pytest.mark.usefixtures(small_pages.__name__)

KEYS = range(1, 7)
EMAILS = [f"r{i}@example.com" for i in range(8)]
_edits = st.tuples(st.sampled_from(["field", "move", "swap", "delete", "erase", "create",
                                    "touch"]),
                   st.sampled_from(list(KEYS)), st.integers(0, len(EMAILS) - 1))
_runs = st.lists(st.lists(st.tuples(st.integers(0, 4), _edits), max_size=5),
                 min_size=1, max_size=4)


class _RereadingHarness(PeopleHarness):
    """Every sync re-reads the whole table (1-day lookback) and scans keys; no brake."""

    def settings(self) -> AppSettings:
        settings = super().settings()
        pipeline = settings.pipelines[0].model_copy(
            update={"delete_scan_every": 1, "max_delete_share": 1.0})
        return settings.model_copy(update={"pipelines": [pipeline]})


def _sync(h: PeopleHarness, edits: list[tuple[int, Edit]]) -> int:
    """One sync with ``edits``; the rows it skipped."""
    return sync_with_edits(h, edits, EMAILS).counts.get("rereads_skipped", 0)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=_runs, batch_size=st.sampled_from([2, 3, 50_000]))
def test_skipping_rereads_keeps_mailtrap_equal_to_the_source(
        runs: list[list[tuple[int, Edit]]], batch_size: int) -> None:
    """Random edits between pages of syncs that re-read everything: after syncs until quiet,
    Mailtrap's list equals the source, and the last sync skipped every live row."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / uuid.uuid4().hex}.db"
        double = MailtrapDouble()
        transport = validating_transport(double)
        h = _RereadingHarness(double, transport, People(url),  # type: ignore[arg-type]
                              url.replace(".db", "-state.db"), fetch_size=2,
                              batch_size=batch_size, lookback="1d")
        try:
            src = h.source
            assert isinstance(src, People)
            for key in range(1, 5):
                src.insert(key, EMAILS[key - 1])
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
            live = [r for r in src.rows() if not r["deleted"]]
            assert _sync(h, []) == len(live)
        finally:
            h.close()
            transport.close()
