"""The state store on a real PostgreSQL server, where several replicas meet: races and locks.

Each thread below has its own ``StateStore`` (its own engine and connection pool), as separate
replicas would. A barrier releases them together so that their statements really overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
import sqlalchemy as sa

from sync_service.models import ChangeKind, ImportEntry, ImportResult, RunKind
from sync_service.state import StateStore
from sync_service.state.tables import metadata

pytestmark = pytest.mark.postgres

REPLICAS = 8
ROUNDS = 15
T = TypeVar("T")


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[StateStore]]:
    """REPLICAS stores on one fresh PostgreSQL database, schema not yet created."""
    stores = [StateStore.from_url(pg_url) for _ in range(REPLICAS)]
    yield stores
    for store in stores:
        store.close()


def _together(stores: list[StateStore], call: Callable[[int, StateStore], T]) -> list[T]:
    """Run ``call(i, store)`` on every store at once; return the results in order."""
    barrier = threading.Barrier(len(stores))

    def task(index: int) -> T:
        barrier.wait()
        return call(index, stores[index])

    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        return list(pool.map(task, range(len(stores))))


def test_replicas_racing_for_a_free_lease_get_exactly_one_winner(
    replicas: list[StateStore],
) -> None:
    """Of replicas taking a free lease at the same instant, exactly one succeeds, every time."""
    replicas[0].upgrade()
    for round_ in range(ROUNDS):
        pipeline = f"p{round_}"
        won = _together(replicas, lambda i, s, p=pipeline: s.acquire_lease(p, f"r{i}", 60))
        assert won.count(True) == 1
        holder = replicas[0].lease_holder(pipeline)
        assert holder is not None
        assert holder[0] == f"r{won.index(True)}"


def test_replicas_racing_for_an_expired_lease_get_exactly_one_winner(
    replicas: list[StateStore],
) -> None:
    """When a dead holder's lease has expired, exactly one racing replica takes it over."""
    replicas[0].upgrade()
    for round_ in range(ROUNDS):
        pipeline = f"p{round_}"
        assert replicas[0].acquire_lease(pipeline, "dead", 0)
        won = _together(replicas[1:], lambda i, s, p=pipeline: s.acquire_lease(p, f"r{i}", 60))
        assert won.count(True) == 1
        assert not replicas[0].renew_lease(pipeline, "dead", 60)


def test_renew_racing_a_takeover_never_leaves_two_holders(replicas: list[StateStore]) -> None:
    """A late renewal racing takeovers: exactly one of them succeeds, and only it holds."""
    replicas[0].upgrade()
    for round_ in range(ROUNDS):
        pipeline = f"p{round_}"
        assert replicas[0].acquire_lease(pipeline, "r0", 0)

        def contend(i: int, store: StateStore, pipeline: str = pipeline) -> bool:
            if i == 0:
                return store.renew_lease(pipeline, "r0", 60)
            return store.acquire_lease(pipeline, f"r{i}", 60)

        outcome = _together(replicas, contend)
        holder = replicas[0].lease_holder(pipeline)
        assert holder is not None
        # Either the renewal lands first (the lease is live again, every takeover fails) or a
        # takeover does (the owner changed, the renewal fails): one success, and it holds.
        assert outcome.count(True) == 1
        assert holder[0] == f"r{outcome.index(True)}"
        for i, store in enumerate(replicas):
            assert store.renew_lease(pipeline, f"r{i}", 60) is (f"r{i}" == holder[0])


def test_replicas_starting_together_on_a_new_database_create_one_schema(
    replicas: list[StateStore],
) -> None:
    """ensure_schema from many replicas at once: all succeed and the schema exists once."""
    _together(replicas, lambda i, s: s.ensure_schema())
    assert replicas[0].schema_revision() == replicas[0].head_revision()
    tables = set(sa.inspect(replicas[0].engine).get_table_names())
    assert set(metadata.tables) <= tables


def test_concurrent_confirms_of_one_pipeline_both_land(replicas: list[StateStore]) -> None:
    """Two batches of one pipeline confirmed at the same time both commit all their hashes."""
    store = replicas[0]
    store.upgrade()
    run_id = store.start_run("p", RunKind.SYNC)
    batch_ids = []
    for part in range(2):
        entries = [
            ImportEntry(source_key=f"{part}-{i}", email=f"{part}-{i}@example.com",
                        kind=ChangeKind.CREATE, hash="h")
            for i in range(5_000)
        ]
        batch_ids.append(store.record_batch("p", run_id, entries))

    def confirm(i: int, s: StateStore) -> None:
        s.confirm_batch(batch_ids[i], ImportResult(id=i + 1, status="finished"))

    _together(replicas[:2], confirm)
    assert store.count_contacts("p") == 10_000
    assert store.open_batches("p") == []
