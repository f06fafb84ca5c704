"""An import's body, and a batch in flight without its payloads (issue 11's memory bound): the
entries' fields and lists read back from the body post the same bytes again."""

from __future__ import annotations

from datetime import date

import orjson
import pytest

from sync_service.models import (
    ChangeKind,
    ImportEntry,
    import_body,
    with_payload,
    without_payload,
)

ENTRIES = [
    ImportEntry(source_key="1", email="a@example.com", kind=ChangeKind.CREATE,
                fields={"name": "Ann", "seats": 3, "ratio": 0.25, "vip": True,
                        "signed_up": date(2024, 2, 29), "note": None, "text": 'q"\\\x00é😀'},
                list_ids_included=(3, 7), hash="h1"),
    ImportEntry(source_key="2", email="b@example.com", kind=ChangeKind.UPDATE, hash="h2"),
    ImportEntry(source_key="3", email="c@example.com", kind=ChangeKind.UNLIST,
                list_ids_excluded=(3,), hash=None),
    ImportEntry(source_key="4", email="d@example.com", kind=ChangeKind.EMAIL_CHANGE,
                fields={"name": ""}, list_ids_included=(7,), list_ids_excluded=(9,), hash="h4"),
]


def test_body_is_the_contacts_as_the_api_takes_them() -> None:
    """The body is {"contacts": [each entry's to_api()]}, in order."""
    assert orjson.loads(import_body(ENTRIES)) == {
        "contacts": [orjson.loads(orjson.dumps(entry.to_api())) for entry in ENTRIES]}


def test_entries_without_payload_read_back_from_the_body_post_the_same_bytes() -> None:
    """Slimmed entries keep key, address, kind and hash; given the body back they make the same
    body again (a date reads back as its ISO text, which is how it was sent)."""
    body = import_body(ENTRIES)
    slim = [without_payload(entry) for entry in ENTRIES]
    assert [(e.source_key, e.email, e.kind, e.hash) for e in slim] == [
        (e.source_key, e.email, e.kind, e.hash) for e in ENTRIES]
    assert all(not e.fields and not e.list_ids_included and not e.list_ids_excluded
               for e in slim)
    restored = with_payload(slim, body)
    assert import_body(restored) == body
    assert restored[0].fields["signed_up"] == "2024-02-29"
    assert restored[3].list_ids_excluded == (9,)


def test_a_body_of_other_contacts_is_refused() -> None:
    """A body that is not the one those entries made is an error, not a silent mix-up."""
    slim = [without_payload(entry) for entry in ENTRIES]
    with pytest.raises(ValueError, match="3 contacts for 4 entries"):
        with_payload(slim, import_body(ENTRIES[:3]))
    with pytest.raises(ValueError, match=r"'b@example\.com' where the batch has 'a@example\.com'"):
        with_payload(slim, import_body([ENTRIES[1], ENTRIES[0], *ENTRIES[2:]]))
