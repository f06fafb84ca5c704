"""The re-read skip's tokens in the state store: written in one statement per call (arrays on
PostgreSQL, a JSON object on SQLite, one row per key where neither works), read back exactly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sync_service.models import RunKind
from sync_service.state import StateStore, sql
from tests.unit.state.builders import confirm, entry
from tests.unit.state.test_contacts import AWKWARD_KEYS


def _tokens(store: StateStore, keys: list[str]) -> dict[str, str]:
    return {key: seen.token for key, seen in store.reread_tokens("p", keys).items()}


def _write_and_replace(store: StateStore, run_id: int) -> None:
    keys = [*AWKWARD_KEYS, *(f"k{i}" for i in range(2_500))]
    confirm(store, run_id, [entry(key, f"{i}@example.com") for i, key in enumerate(keys)], 1)
    store.note_reread("p", {key: f"old{i}" for i, key in enumerate(keys)})
    assert _tokens(store, keys) == {key: f"old{i}" for i, key in enumerate(keys)}
    # Half of them again, with new tokens: those are replaced, the rest kept.
    store.note_reread("p", {key: f"new{i}" for i, key in enumerate(keys) if i % 2 == 0})
    assert _tokens(store, keys) == {key: f"new{i}" if i % 2 == 0 else f"old{i}"
                                    for i, key in enumerate(keys)}


def test_tokens_of_many_awkward_keys_are_written_and_replaced(store: StateStore,
                                                              run_id: int) -> None:
    """One call writes thousands of tokens, keys of any text included, and a later call
    replaces exactly the keys it names."""
    _write_and_replace(store, run_id)


def test_tokens_are_written_one_row_per_key_where_sqlite_has_no_json(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SQLite's JSON functions (builds before 3.38) the same writes and look-ups work,
    through one row per key and expanding IN-lists."""
    monkeypatch.setattr(sql, "has_json", lambda conn: False)
    store = StateStore.from_url(sqlite_url)
    store.upgrade()
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: statements.append(statement))
    try:
        _write_and_replace(store, store.start_run("p", RunKind.SYNC))
    finally:
        store.close()
    assert not [s for s in statements if "json_each" in s]
    assert [s for s in statements if s.startswith("INSERT INTO reread_tokens") and "?" in s]

