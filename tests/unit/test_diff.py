"""The pure diff: what each source record means, given what Mailtrap confirmed."""

from __future__ import annotations

from typing import Any

from sync_service.diff import TOMBSTONE, Change, Differ, OnRecord, Pending, View
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


def _decide(differ: Differ, record: SourceRecord, view: View, pending: Pending | None = None
            ) -> Change:
    return differ.decide(differ.map([record])[0], view, pending or Pending())


def test_a_holder_whose_source_row_moved_on_releases_the_address() -> None:
    """A claimed address is refused only while its holder's current row still has it."""
    differ = _differ()
    holder = _stored(differ, 1, "a@example.com")
    view = View(stored={"1": holder}, holders={"a@example.com": ["1"]},
                live={"1": {"elsewhere@example.com"}})
    assert _decide(differ, _rec(2, "a@example.com"), view).kind is ChangeKind.CREATE
    view.live = {"1": {"a@example.com"}}
    refused = _decide(differ, _rec(2, "a@example.com"), view)
    assert refused.rejection is not None
    assert refused.rejection.kind is RejectKind.DUPLICATE


def test_a_key_queued_elsewhere_no_longer_holds_its_confirmed_address() -> None:
    """A holder whose queued entry takes another address lets its confirmed one go."""
    differ = _differ()
    pending = Pending()
    pending.add(_diff(differ, [_rec(1, "b@example.com")],
                      [_stored(differ, 1, "a@example.com")])[0])
    view = View(holders={"a@example.com": ["1"]})
    assert _decide(differ, _rec(2, "a@example.com"), view, pending).kind is ChangeKind.CREATE


def test_old_address_another_key_now_holds_stays_listed() -> None:
    """An email change does not unlist an old address that another queued key took."""
    differ = _differ()
    pending = Pending()
    pending.add(_diff(differ, [_rec(2, "a@example.com")])[0])
    view = View(stored={"1": _stored(differ, 1, "a@example.com")})
    change = _decide(differ, _rec(1, "b@example.com"), view, pending)
    assert change.kind is ChangeKind.EMAIL_CHANGE
    assert [e.email for e in change.entries] == ["b@example.com"]


def test_deleted_key_whose_address_was_taken_is_forgotten_not_unlisted() -> None:
    """A deleted key sends nothing when another key holds its address; its state is dropped."""
    differ = _differ()
    pending = Pending()
    pending.add(_diff(differ, [_rec(2, "a@example.com")])[0])
    view = View(stored={"1": _stored(differ, 1, "a@example.com")})
    change = _decide(differ, _rec(1, "a@example.com", deleted=True), view, pending)
    assert change.entries == ()
    assert change.forget


def test_a_refused_contact_is_not_sent_again_until_it_changes() -> None:
    """The hash Mailtrap refused is not posted again; another value, or resend, is."""
    differ = _differ()
    refused = _diff(differ, [_rec(1, "a@example.com", first="Bad")])[0].entries[0].hash
    view = View(rejections={"1": OnRecord(RejectKind.MAILTRAP, refused)})
    same = _decide(differ, _rec(1, "a@example.com", first="Bad"), view)
    assert same.still_refused
    assert same.entries == ()
    assert _decide(differ, _rec(1, "a@example.com", first="Good"), view).entries
    assert _decide(_differ(resend=True), _rec(1, "a@example.com", first="Bad"), view).entries
