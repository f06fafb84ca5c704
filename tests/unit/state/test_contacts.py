"""Confirmed contacts: look-ups by key and by email, in chunks, per pipeline."""

from __future__ import annotations

from sync_service.models import StoredContact
from sync_service.state import StateStore
from sync_service.state.sql import IN_CHUNK
from tests.unit.state.builders import confirm, entry

MANY = 2 * IN_CHUNK + 345  # three chunks, the last one partial


def test_get_contacts_answers_more_keys_than_one_chunk(store: StateStore, run_id: int) -> None:
    """get_contacts with > 1,000 keys finds every stored one and omits the unknown ones."""
    confirm(store, run_id, [entry(f"k{i}", digest=f"h{i}") for i in range(MANY)], 1)
    wanted = [f"k{i}" for i in range(MANY)] + [f"missing{i}" for i in range(300)]
    found = store.get_contacts("p", wanted)
    assert len(found) == MANY
    assert found[f"k{MANY - 1}"] == StoredContact(f"k{MANY - 1}", f"k{MANY - 1}@example.com",
                                                  f"h{MANY - 1}")


def test_get_owners_answers_more_emails_than_one_chunk(store: StateStore, run_id: int) -> None:
    """get_owners with > 1,000 emails maps each stored email to its key, in all chunks."""
    confirm(store, run_id, [entry(f"k{i}") for i in range(MANY)], 1)
    emails = [f"k{i}@example.com" for i in range(MANY)] + ["nobody@example.com"]
    owners = store.get_owners("p", emails)
    assert owners == {f"k{i}@example.com": f"k{i}" for i in range(MANY)}


def test_lookups_are_per_pipeline(store: StateStore, run_id: int) -> None:
    """Another pipeline's contacts are invisible to look-ups and counts."""
    confirm(store, run_id, [entry("1")], 1)
    assert store.get_contacts("q", ["1"]) == {}
    assert store.get_owners("q", ["1@example.com"]) == {}
    assert store.count_contacts("q") == 0
    assert store.count_contacts("p") == 1


def test_duplicate_and_empty_inputs(store: StateStore, run_id: int) -> None:
    """Repeated keys are answered once; empty inputs give empty answers without a query error."""
    confirm(store, run_id, [entry("1")], 1)
    assert list(store.get_contacts("p", ["1", "1", "1"])) == ["1"]
    assert store.get_contacts("p", []) == {}
    assert store.get_owners("p", []) == {}


def test_email_shared_by_two_keys_names_the_lowest_key(store: StateStore, run_id: int) -> None:
    """If two keys ended up with one email (a swap in flight), the owner is deterministic."""
    confirm(store, run_id, [entry("b", "same@example.com")], 1)
    confirm(store, run_id, [entry("a", "same@example.com")], 2)
    assert store.get_owners("p", ["same@example.com"]) == {"same@example.com": "a"}
