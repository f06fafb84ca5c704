"""Confirmed contacts: look-ups by key and by email, in chunks, per pipeline."""

from __future__ import annotations

import pytest

from sync_service.models import Rejection, RejectKind, StoredContact
from sync_service.state import StateStore
from sync_service.state.sql import ARRAY_CHUNK, IN_CHUNK
from tests.unit.state.builders import confirm, entry

MANY = 2 * IN_CHUNK + 345  # three chunks, the last one partial

# Keys whose text a look-up's parameter must carry exactly: JSON's and SQL's special characters,
# NUL and the state store's escape mark (tables.SafeText), non-BMP and line-separator characters,
# text that looks like JSON, the empty key.
AWKWARD_KEYS = ['"', "'", "\\", "\\0", "a\x00b", "\x00", "\ufdd0", "\ufdd0x\\0",
                "😀", "\u2028", "[1]", '{"a": 1}', "null", " ", "", "é", "e\u0301",
                "x" * 300]


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


def test_get_contacts_answers_more_keys_than_one_array(store: StateStore, run_id: int) -> None:
    """More keys than one array parameter (PostgreSQL's ANY, SQLite's json_each) are all
    looked up."""
    many = ARRAY_CHUNK + 123
    confirm(store, run_id, [entry(f"k{i}", digest=f"h{i}") for i in range(many)], 1)
    found = store.get_contacts("p", [f"k{i}" for i in range(many)] + ["missing"])
    assert len(found) == many
    assert found["k0"].hash == "h0"
    assert found[f"k{many - 1}"].hash == f"h{many - 1}"


@pytest.mark.parametrize("key", AWKWARD_KEYS, ids=repr)
def test_lookups_find_keys_and_emails_of_any_text(store: StateStore, run_id: int,
                                                  key: str) -> None:
    """Each look-up by key or address finds a stored key of awkward text, and only it (a near
    neighbour is stored too, and a key one character off is not found)."""
    email = f"{key}@example.com"
    confirm(store, run_id, [entry(key, email, digest="h1"), entry(key + "~", digest="h2")], 1)
    assert store.get_contacts("p", [key, key + "!"]) == {key: StoredContact(key, email, "h1")}
    assert store.get_owners("p", [email]) == {email: key}
    assert store.get_holders("p", [email]) == {email: [key]}
    store.note_reread("p", {key: "t" * 32})
    seen = store.reread_tokens("p", [key, key + "~"])
    assert list(seen) == [key]
    assert (seen[key].email, seen[key].hash) == (email, "h1")
    refused = Rejection(key + "~", None, RejectKind.INVALID_EMAIL, "bad")
    store.record_rejections("p", run_id, [refused])
    assert list(store.get_rejections("p", [key, key + "~"])) == [key + "~"]
