"""Fixtures for the state store tests: a migrated store on SQLite, and on PostgreSQL when marked.

``store_url`` runs a test once per engine; the PostgreSQL run carries ``pytest.mark.postgres`` and
uses the ``pg_url`` fixture (MAILTRAP_SYNC_TEST_PG_URL), which skips or fails as conftest decides.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sync_service.models import RunKind
from sync_service.state import StateStore


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database URL, once on SQLite and once on PostgreSQL."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "pg_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def new_store(store_url: str) -> Iterator[StateStore]:
    """A store on an empty database, schema not created yet."""
    store = StateStore.from_url(store_url)
    yield store
    store.close()


@pytest.fixture
def store(new_store: StateStore) -> StateStore:
    """A store whose database is migrated to head."""
    new_store.upgrade()
    return new_store


@pytest.fixture
def run_id(store: StateStore) -> int:
    """A RUNNING sync run of pipeline "p"."""
    return store.start_run("p", RunKind.SYNC)

