"""Rejections: recorded with their reason, refreshed with attempts, listed, cleared."""

from __future__ import annotations

from sync_service.models import Rejection, RejectKind, RunKind
from sync_service.state import StateStore


def _rejection(key: str, reason: str = "bad email", kind: RejectKind = RejectKind.INVALID_EMAIL
               ) -> Rejection:
    return Rejection(key, f"{key}@example.com", kind, reason)


def test_rejections_are_recorded_with_reason_and_run(store: StateStore, run_id: int) -> None:
    """record_rejections stores kind, reason, email and run, with attempts 1."""
    store.record_rejections("p", run_id, [_rejection("1")])
    [got] = store.list_rejections("p")
    assert (got.source_key, got.email, got.kind, got.reason, got.run_id, got.attempts) == (
        "1", "1@example.com", RejectKind.INVALID_EMAIL, "bad email", run_id, 1)
    assert got.first_seen == got.last_seen


def test_rejecting_a_key_again_updates_it_and_counts_attempts(
    store: StateStore, run_id: int
) -> None:
    """A second rejection of a key keeps first_seen, takes the new reason and adds an attempt."""
    store.record_rejections("p", run_id, [_rejection("1")])
    later_run = store.start_run("p", RunKind.RETRY)
    store.record_rejections("p", later_run, [
        _rejection("1", "blocked by Mailtrap", RejectKind.MAILTRAP)])
    [got] = store.list_rejections("p")
    assert (got.kind, got.reason, got.run_id, got.attempts) == (
        RejectKind.MAILTRAP, "blocked by Mailtrap", later_run, 2)
    assert got.first_seen <= got.last_seen


def test_one_call_with_a_key_twice_keeps_the_last(store: StateStore, run_id: int) -> None:
    """A key repeated within one call is recorded once, with the last reason."""
    store.record_rejections("p", run_id, [_rejection("1", "first"), _rejection("1", "second")])
    [got] = store.list_rejections("p")
    assert (got.reason, got.attempts) == ("second", 1)


def test_list_count_and_clear(store: StateStore, run_id: int) -> None:
    """Rejections are counted and listed per pipeline, limited on request, cleared by key."""
    store.record_rejections("p", run_id, [_rejection(str(i)) for i in range(1200)])
    store.record_rejections("q", None, [_rejection("x")])
    assert store.count_rejections("p") == 1200
    assert len(store.list_rejections("p", limit=10)) == 10
    store.clear_rejections("p", [str(i) for i in range(1100)] + ["x"])
    assert store.count_rejections("p") == 100
    assert store.count_rejections("q") == 1
    assert store.list_rejections("q")[0].run_id is None


def test_empty_call_does_nothing(store: StateStore) -> None:
    """record_rejections with nothing to record writes nothing."""
    store.record_rejections("p", None, [])
    assert store.count_rejections("p") == 0
