"""Runs: start, finish, listing, and interrupting the ones a dead process left RUNNING."""

from __future__ import annotations

from datetime import UTC

import pytest

from sync_service.errors import StateError
from sync_service.models import RunKind, RunOutcome
from sync_service.state import StateStore


def test_run_lifecycle_is_recorded(store: StateStore) -> None:
    """start_run opens a RUNNING run; finish_run stores outcome, counts, error and finish time."""
    run_id = store.start_run("p", RunKind.BACKFILL)
    running = store.last_run("p")
    assert running is not None
    assert (running.id, running.kind, running.outcome, running.finished_at) == (
        run_id, RunKind.BACKFILL, RunOutcome.RUNNING, None)
    store.finish_run(run_id, RunOutcome.FAILED, {"sent": 3, "rejected": 1}, "boom")
    done = store.last_run("p")
    assert done is not None
    assert (done.outcome, dict(done.counts), done.error) == (
        RunOutcome.FAILED, {"sent": 3, "rejected": 1}, "boom")
    assert done.finished_at is not None
    assert done.started_at <= done.finished_at


def test_timestamps_are_timezone_aware_utc(store: StateStore) -> None:
    """Timestamps come back tz-aware in UTC on every engine (SQLite stores none)."""
    store.start_run("p", RunKind.SYNC)
    run = store.last_run("p")
    assert run is not None
    assert run.started_at.tzinfo is not None
    assert run.started_at.utcoffset() == UTC.utcoffset(None)


def test_list_runs_is_newest_first_limited_and_per_pipeline(store: StateStore) -> None:
    """list_runs returns the pipeline's runs, newest first, at most ``limit``."""
    ids = [store.start_run("p", RunKind.SYNC) for _ in range(4)]
    store.start_run("q", RunKind.RETRY)
    assert [r.id for r in store.list_runs("p", limit=3)] == ids[::-1][:3]
    assert [r.kind for r in store.list_runs("q")] == [RunKind.RETRY]
    assert store.last_run("nothing") is None


def test_interrupt_stale_runs_closes_only_running_runs_of_the_pipeline(
    store: StateStore,
) -> None:
    """RUNNING runs of the pipeline become INTERRUPTED; finished runs and other pipelines stay."""
    stale = store.start_run("p", RunKind.SYNC)
    done = store.start_run("p", RunKind.SYNC)
    store.finish_run(done, RunOutcome.SUCCEEDED, {})
    other = store.start_run("q", RunKind.SYNC)
    assert store.interrupt_stale_runs("p") == 1
    runs = {r.id: r for r in store.list_runs("p")}
    assert runs[stale].outcome is RunOutcome.INTERRUPTED
    assert runs[stale].finished_at is not None
    assert runs[done].outcome is RunOutcome.SUCCEEDED
    assert store.list_runs("q")[0].outcome is RunOutcome.RUNNING
    assert store.list_runs("q")[0].id == other
    assert store.interrupt_stale_runs("p") == 0


def test_finishing_an_unknown_run_is_a_state_error(store: StateStore) -> None:
    """finish_run with an id that does not exist raises instead of silently doing nothing."""
    with pytest.raises(StateError, match="no run with id 404"):
        store.finish_run(404, RunOutcome.SUCCEEDED, {})
