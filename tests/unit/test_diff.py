"""The pure diff: what each source record means, given what Mailtrap confirmed."""

from __future__ import annotations

from typing import Any

from sync_service.diff import TOMBSTONE, Differ
from sync_service.mapping import Mapper, contact_hash
from sync_service.models import ChangeKind, RejectKind, SourceRecord, StoredContact

LISTS = (5,)


def _differ(resend: bool = False) -> Differ:
    mapper = Mapper(email_column="email", fields={"first_name": "first"},
                    field_types={"first_name": "text"}, list_ids=LISTS)
    return Differ(mapper, resend=resend)


def _rec(key: int, email: str | None, first: str = "A", deleted: bool = False) -> SourceRecord:
    return SourceRecord(key=key, cursor=key, values={"email": email, "first": first},
                        deleted=deleted)


def _stored(differ: Differ, key: int, email: str, first: str = "A") -> StoredContact:
    contact = differ.mapper.contact({"email": email, "first": first})
    return StoredContact(str(key), contact.email, contact_hash(contact))


def _diff(differ: Differ, records: list[SourceRecord], stored: list[StoredContact] = (),  # type: ignore[assignment]
          pending: dict[str, str] | None = None) -> list[Any]:
    by_key = {s.source_key: s for s in stored}
    owners = {s.email: s.source_key for s in stored}
    return differ.diff(differ.map(records), by_key, owners, pending or {})


def test_new_changed_and_unchanged_records() -> None:
    """New keys are created, changed content updated, identical content not sent."""
    differ = _differ()
    stored = [_stored(differ, 2, "b@example.com"), _stored(differ, 3, "c@example.com")]
    changes = _diff(differ, [_rec(1, "a@example.com"), _rec(2, "b@example.com", first="B"),
                             _rec(3, "c@example.com")], stored)
    assert [c.kind for c in changes] == [ChangeKind.CREATE, ChangeKind.UPDATE,
                                         ChangeKind.UNCHANGED]
    assert changes[0].entries[0].to_api() == {
        "email": "a@example.com", "fields": {"first_name": "A"}, "list_ids_included": [5]}
    assert changes[2].entries == ()


def test_resend_sends_unchanged_contacts() -> None:
    """With resend, a contact whose hash is unchanged is sent anyway."""
    differ = _differ(resend=True)
    changes = _diff(differ, [_rec(3, "c@example.com")], [_stored(differ, 3, "c@example.com")])
    assert changes[0].kind is ChangeKind.UPDATE


def test_email_change_unlists_the_old_address() -> None:
    """When a key's email changes, the old address leaves the lists and the new one is sent."""
    differ = _differ()
    changes = _diff(differ, [_rec(1, "new@example.com")], [_stored(differ, 1, "old@example.com")])
    old, new = changes[0].entries
    assert changes[0].kind is ChangeKind.EMAIL_CHANGE
    assert old.to_api() == {"email": "old@example.com", "list_ids_excluded": [5]}
    assert old.hash is None
    assert new.email == "new@example.com"
    assert new.hash is not None


def test_duplicate_email_the_confirmed_owner_wins() -> None:
    """A second key with an email another key owns is rejected, naming the owner."""
    differ = _differ()
    changes = _diff(differ, [_rec(9, "A@example.com ")], [_stored(differ, 1, "a@example.com")])
    assert changes[0].kind is None
    assert changes[0].rejection.kind is RejectKind.DUPLICATE
    assert "source key 1" in changes[0].rejection.reason


def test_duplicate_email_within_a_run_the_first_wins() -> None:
    """Two new keys with one email: the first in order is sent, the second rejected."""
    changes = _diff(_differ(), [_rec(1, "x@example.com"), _rec(2, "X@example.com")])
    assert changes[0].kind is ChangeKind.CREATE
    assert changes[1].rejection.kind is RejectKind.DUPLICATE


def test_duplicate_of_an_entry_pending_in_the_batch() -> None:
    """An email already in the batch being built counts as owned by that entry's key."""
    changes = _diff(_differ(), [_rec(2, "x@example.com")], pending={"x@example.com": "1"})
    assert changes[0].rejection.kind is RejectKind.DUPLICATE


def test_invalid_rows_are_rejected_with_reason_and_position() -> None:
    """Rows with a missing or invalid email are rejected, keeping their position."""
    changes = _diff(_differ(), [_rec(4, None), _rec(5, "not-an-email")])
    assert [c.rejection.kind for c in changes] == [RejectKind.INVALID_EMAIL] * 2
    assert [c.position.key for c in changes] == [4, 5]


def test_deleted_record_unlists_and_leaves_a_tombstone() -> None:
    """A deleted record leaves the lists; if it comes back, it is sent again."""
    differ = _differ()
    changes = _diff(differ, [_rec(1, "a@example.com", deleted=True)],
                    [_stored(differ, 1, "a@example.com")])
    entry = changes[0].entries[0]
    assert entry.list_ids_excluded == LISTS
    assert entry.hash == TOMBSTONE
    back = _diff(differ, [_rec(1, "a@example.com")],
                 [StoredContact("1", "a@example.com", TOMBSTONE)])
    assert back[0].kind is ChangeKind.CREATE
