"""Leases: one holder per pipeline; expiry, renewal and release (races: integration tests)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sync_service.models import RunKind
from sync_service.state import StateStore
from tests.unit.state.builders import confirm, entry


def test_a_free_lease_is_taken_and_then_refused_to_others(store: StateStore) -> None:
    """The first owner gets the lease; another owner is refused while it is live."""
    assert store.acquire_lease("p", "a", 60)
    assert not store.acquire_lease("p", "b", 60)
    holder = store.lease_holder("p")
    assert holder is not None
    assert holder[0] == "a"
    assert holder[1].tzinfo is not None


def test_the_holder_may_take_its_lease_again(store: StateStore) -> None:
    """Re-acquiring by the same owner succeeds (a restart with the same id)."""
    assert store.acquire_lease("p", "a", 60)
    assert store.acquire_lease("p", "a", 60)


def test_leases_are_per_pipeline(store: StateStore) -> None:
    """Holding one pipeline's lease does not block another pipeline."""
    assert store.acquire_lease("p", "a", 60)
    assert store.acquire_lease("q", "b", 60)


def test_an_expired_lease_is_taken_over(store: StateStore) -> None:
    """Once its time is up, another owner takes the lease."""
    assert store.acquire_lease("p", "a", 0)
    assert store.acquire_lease("p", "b", 60)
    holder = store.lease_holder("p")
    assert holder is not None
    assert holder[0] == "b"


def test_renew_extends_a_held_lease(store: StateStore) -> None:
    """renew_lease moves the expiry forward for the holder."""
    assert store.acquire_lease("p", "a", 1)
    before = store.lease_holder("p")
    assert store.renew_lease("p", "a", 3600)
    after = store.lease_holder("p")
    assert before is not None
    assert after is not None
    assert after[1] > before[1]


def test_renew_after_losing_the_lease_returns_false(store: StateStore) -> None:
    """After a takeover, the old holder's renewal fails and the new holder keeps the lease."""
    assert store.acquire_lease("p", "a", 0)
    assert store.acquire_lease("p", "b", 60)
    assert not store.renew_lease("p", "a", 60)
    holder = store.lease_holder("p")
    assert holder is not None
    assert holder[0] == "b"


def test_release_frees_the_lease_only_for_its_holder(store: StateStore) -> None:
    """release_lease by a non-holder does nothing; by the holder it frees the lease."""
    assert store.acquire_lease("p", "a", 60)
    store.release_lease("p", "b")
    assert not store.acquire_lease("p", "b", 60)
    store.release_lease("p", "a")
    assert store.lease_holder("p") is None
    assert not store.renew_lease("p", "a", 60)
    assert store.acquire_lease("p", "b", 60)


def test_negative_ttl_is_refused(store: StateStore) -> None:
    """A negative ttl is a programming error."""
    with pytest.raises(ValueError, match="ttl"):
        store.acquire_lease("p", "a", -1)


def test_threads_racing_on_one_sqlite_file_get_exactly_one_winner(sqlite_url: str) -> None:
    """SQLite stores racing (confirming batches, taking a lease): one winner, no lock error."""
    stores = [StateStore.from_url(sqlite_url) for _ in range(6)]
    stores[0].upgrade()
    barrier = threading.Barrier(len(stores))

    def contend(index: int) -> bool:
        store = stores[index]
        run_id = store.start_run("p", RunKind.SYNC)
        barrier.wait()
        # Reads followed by writes, overlapping: with deferred transactions SQLite would fail
        # some of these at once with "database is locked"; immediate ones wait their turn.
        for round_ in range(5):
            confirm(store, run_id, [entry(f"{index}-{round_}")], index * 100 + round_)
        return store.acquire_lease("p", f"r{index}", 60)

    try:
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            won = list(pool.map(contend, range(len(stores))))
    finally:
        for store in stores:
            store.close()
    assert won.count(True) == 1


def test_each_acquisition_bumps_the_generation(store: StateStore) -> None:
    """A new holder (or the same one re-taking it) gets a higher fencing generation."""
    first = store.take_lease("p", "a", 0)
    second = store.take_lease("p", "b", 60)
    assert first is not None
    assert second is not None
    assert second > first
    assert store.take_lease("p", "c", 60) is None


def test_fenced_writes_fail_once_the_lease_changed_hands(store: StateStore) -> None:
    """A store fenced with an old generation can write nothing after a takeover."""
    from sync_service.errors import LeaseLost
    from sync_service.models import Position
    from sync_service.state.store import Fence

    generation = store.take_lease("p", "a", 0)
    assert generation is not None
    fenced = store.fenced(Fence("p", "a", generation))
    fenced.set_watermark("p", Position(1, 1))
    assert store.take_lease("p", "b", 60) is not None
    with pytest.raises(LeaseLost, match="no longer held"):
        fenced.set_watermark("p", Position(2, 2))
    with pytest.raises(LeaseLost):
        fenced.start_run("p", RunKind.SYNC)
    assert store.get_watermark("p") == Position(1, 1)
    assert not store.renew_lease("p", "a", 60, generation)


def test_a_dead_holders_lock_is_free_and_a_live_ones_is_not(store: StateStore) -> None:
    """The HolderLock is exclusive while held and free again once its holder lets go."""
    first = store.holder_lock("p")
    second = store.holder_lock("p")
    if not first.try_acquire():
        pytest.skip("this store has no holder lock (in-memory SQLite)")
    try:
        assert not second.try_acquire()
    finally:
        first.release()
    assert second.try_acquire()
    second.release()
